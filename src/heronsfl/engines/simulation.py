"""The in-process simulation engine: all clients, the main server and the Fed-Server in one process.

One round:
1. The Fed-Server's global client (+ aux) state is sent to every client at wire precision.
2. Clients run one after another in a single reused workspace (so host memory does not grow
   with the number of clients), each for h local steps on its own partition.
   - Decoupled algorithms: uploads are queued; after all clients ran, the main server consumes
     them in `train.server_order`. Since decoupled clients never hear from the server during a
     round, this is exactly what a concurrently running server would compute.
   - Synchronous algorithms (sends_gradients): the server answers each upload at once; clients
     take turns in a seeded random order (SFLV2).
3. The Fed-Server averages what the clients uploaded (streamed, see aggregation.py).
4. Evaluation: global client -> server on the test set, and global client -> aux head.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heronsfl.aggregation import WeightedAverage, to_wire
from heronsfl.algorithms import get_algorithm
from heronsfl.algorithms.base import ClientState, ServerState, SplitAlgorithm, make_optimizer
from heronsfl.config import RunConfig
from heronsfl.data.partition import partition
from heronsfl.errors import ConfigError
from heronsfl.data.sampler import round_batches
from heronsfl.engines.step import StepCost, local_step, measure_local_step
from heronsfl.messages import Batch, Upload
from heronsfl.metrics.comm import CommCounter
from heronsfl.rng import generator, numpy_rng
from heronsfl.tasks import build_split_model, get_task, load_datasets

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = 'cuda' but no CUDA device is visible; use device=cpu or auto")
    return torch.device(name)


@dataclass
class EvalResult:
    accuracy: float
    loss: float
    aux_accuracy: float | None


class Simulation:
    """Runs `cfg` round by round; `run()` yields one metrics record per round."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.task = get_task(cfg.task)
        self.algo: SplitAlgorithm = get_algorithm(cfg.algorithm)(cfg)
        self.model = build_split_model(cfg, with_aux=self.algo.uses_aux_head).to(self.device)
        self.train_set, self.test_set = load_datasets(cfg)
        self.parts = partition(
            cfg.data.partition, self.train_set.y.numpy(), cfg.clients, numpy_rng(cfg.seed, "partition")
        )
        self.server = ServerState(
            self.model.server, make_optimizer(self.model.server.parameters(), cfg.server_optim)
        )
        # The Fed-Server's global state: fp32 master copy, the workspace modules only borrow it.
        self.global_state = {k: v.detach().clone() for k, v in self._client_modules_state().items()}
        self.comm = CommCounter()
        self.step_cost: StepCost | None = None
        self.round = 0

    # ------------------------------------------------------------------ helpers
    def _averaged(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"client": self.model.client}
        if self.algo.uses_aux_head and self.model.aux is not None:
            mods["aux"] = self.model.aux
        return mods

    def _client_modules_state(self) -> dict[str, Tensor]:
        return prefixed_state(self._averaged())

    def _load_client_modules(self, state: dict[str, Tensor]) -> None:
        load_prefixed(self._averaged(), state)

    def make_batch(self, idx: Tensor, gen: torch.Generator) -> Batch:
        x = self.task.preprocess(self.train_set.x[idx], True, self.cfg.data.augment, gen)
        return Batch(x.to(self.device), self.train_set.y[idx].to(self.device))

    def _measure_at(self) -> int:
        """Which local step of the first client of round 1 is measured: the first upload step
        of a decoupled client (its costliest), the second step of a synchronous one."""
        h = self.cfg.train.local_steps
        if self.algo.sends_gradients:
            return min(1, h - 1)
        return self.cfg.train.upload_every - 1

    # ------------------------------------------------------------------ one round
    def client_run(self, client_id: int, wire_state: dict[str, Tensor], measure: bool) -> ClientRun:
        """Client `client_id`'s round as a step-wise iterator (see ClientRun)."""
        client = copy.deepcopy(self.model.client)
        aux = copy.deepcopy(self.model.aux) if self.algo.uses_aux_head else None
        return ClientRun(self, client_id, client, aux, wire_state, measure)

    def run_round(self) -> dict[str, Any]:
        self.round += 1
        cfg = self.cfg
        t0 = time.perf_counter()
        clients = list(range(cfg.clients))
        wire_state = to_wire(self.global_state, self.algo.wire_dtype)
        avg = WeightedAverage()
        n_server_before = len(self.server.losses)
        self.model.server.train()

        def runs(order: list[int]) -> Iterator[ClientRun]:
            # Lazily created: under client-by-client order only one client exists at a time.
            for i, cid in enumerate(order):
                self.comm.add("down", "model", wire_state.values())
                yield self.client_run(cid, wire_state, measure=self.step_cost is None and i == 0)

        if self.algo.sends_gradients:
            # SFLV2: clients take turns in a seeded random order; the server answers inline.
            order = numpy_rng(cfg.seed, "order", self.round).permutation(clients).tolist()
            done = [self._drain(run) for run in runs(order)]
        elif cfg.train.server_order == "client-by-client":
            done = [self._drain(run) for run in runs(clients)]
        else:
            # Round-robin: every client advances one step, the server consumes the uploads in
            # client order, and so on. Clients never wait for the server, so this is what a
            # server consuming a concurrent stream of uploads would compute.
            started = list(runs(clients))
            for step_uploads in zip(*started, strict=True):
                for up in step_uploads:
                    if up is not None:
                        self.algo.server_step(self.server, up)
            done = started
        client_losses: list[float] = []
        for run in done:
            weight = 1.0 if cfg.train.aggregation == "uniform" else float(len(self.parts[run.client_id]))
            assert run.state is not None, "a finished client run holds its state"
            avg.add(run.state, weight)
            client_losses += run.losses
        del done
        self.global_state = avg.result(like=self.global_state)
        server_losses = self.server.losses[n_server_before:]
        record: dict[str, Any] = {"round": self.round}
        if self.round % cfg.train.eval_every == 0 or self.round == cfg.rounds:
            ev = self.evaluate()
            record["test/accuracy"] = ev.accuracy
            record["test/loss"] = ev.loss
            if ev.aux_accuracy is not None:
                record["aux/accuracy"] = ev.aux_accuracy
        if client_losses:
            record["train/client_loss"] = sum(client_losses) / len(client_losses)
        if server_losses:
            record["train/server_loss"] = sum(server_losses) / len(server_losses)
        record.update(self.comm.as_metrics())
        assert self.step_cost is not None, "round 1 measures one client step"
        record["client/peak_mem_bytes"] = self.step_cost.peak_mem_bytes
        record["client/macs_per_step"] = self.step_cost.flops / 2
        record["client/flops_per_step"] = self.step_cost.flops
        record["round_s"] = time.perf_counter() - t0
        return record

    def _drain(self, run: ClientRun) -> ClientRun:
        """Run one client to the end; a decoupled server consumes each upload as it arrives."""
        for up in run:
            if up is not None and not self.algo.sends_gradients:
                self.algo.server_step(self.server, up)
        return run

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> EvalResult:
        """Global client -> server (test/accuracy) and global client -> aux (aux/accuracy)."""
        self._load_client_modules(self.global_state)
        mods = [self.model.client, self.model.server, self.model.aux]
        for m in mods:
            if m is not None:
                m.eval()
        correct = aux_correct = 0
        loss_sum = 0.0
        n = len(self.test_set)
        bs = self.cfg.train.eval_batch_size
        for start in range(0, n, bs):
            x = self.task.preprocess(self.test_set.x[start : start + bs], False, False, None)
            x = x.to(self.device)
            y = self.test_set.y[start : start + bs].to(self.device)
            acts = self.model.client(x)
            logits = self.model.server(acts)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            if self.model.aux is not None and self.algo.uses_aux_head:
                aux_correct += int((self.model.aux(acts).argmax(1) == y).sum())
        has_aux = self.model.aux is not None and self.algo.uses_aux_head
        return EvalResult(correct / n, loss_sum / n, aux_correct / n if has_aux else None)

    def run(self, on_round: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        records = []
        for _ in range(self.cfg.rounds):
            record = self.run_round()
            records.append(record)
            if on_round is not None:
                on_round(record)
        return records


class ClientRun:
    """One client's round, one local step per iteration; yields the step's upload (or None).

    The client works on its own copy of the client (+ aux) modules, loaded from the wire copy of
    the global state. When the iteration ends, `state` holds what it sends back (at wire
    precision) and `losses` its local losses.
    """

    def __init__(
        self,
        sim: Simulation,
        client_id: int,
        client: nn.Module,
        aux: nn.Module | None,
        wire_state: dict[str, Tensor],
        measure: bool,
    ) -> None:
        self.sim = sim
        self.client_id = client_id
        self.modules: dict[str, nn.Module] = {"client": client}
        if aux is not None:
            self.modules["aux"] = aux
        load_prefixed(self.modules, wire_state)  # casts the wire copy up to fp32
        self.measure = measure
        self.state: dict[str, Tensor] | None = None
        self.losses: list[float] = []
        self._c = ClientState(client_id, sim.round, client.train(), aux.train() if aux else None, None)

    def __iter__(self) -> Iterator[Upload | None]:
        sim, c = self.sim, self._c
        cfg = sim.cfg
        c.optimizer = sim.algo.new_client_optimizer(c)
        batches = round_batches(
            sim.parts[self.client_id],
            cfg.train.batch_size,
            cfg.train.local_steps,
            generator(cfg.seed, "batches", sim.round, self.client_id),
        )
        aug = generator(cfg.seed, "augment", sim.round, self.client_id)
        for step, idx in enumerate(batches):
            c.step = step
            batch = sim.make_batch(idx, aug)
            if self.measure and step == sim._measure_at():
                up, down, sim.step_cost = measure_local_step(sim.algo, c, batch, sim.server)
            else:
                up, down = local_step(sim.algo, c, batch, sim.server)
            if up is not None:
                sim.comm.add("up", "activations", [up.activations])
                sim.comm.add("up", "labels", [up.labels])
            if down is not None:
                sim.comm.add("down", "gradients", [down.gradient])
            yield up
        self.state = to_wire(prefixed_state(self.modules), sim.algo.wire_dtype)
        sim.comm.add("up", "model", self.state.values())
        self.losses = c.losses
        self._c = None  # type: ignore[assignment]  # free the modules and optimizer
        self.modules = {}


def prefixed_state(modules: dict[str, nn.Module]) -> dict[str, Tensor]:
    """{"client.0.weight": ..., "aux.1.bias": ...}: one flat state for several modules."""
    return {f"{prefix}.{k}": v for prefix, m in modules.items() for k, v in m.state_dict().items()}


def load_prefixed(modules: dict[str, nn.Module], state: dict[str, Tensor]) -> None:
    for prefix, m in modules.items():
        m.load_state_dict({k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")})
