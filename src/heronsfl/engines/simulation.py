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
        return {
            f"{prefix}.{k}": v for prefix, m in self._averaged().items() for k, v in m.state_dict().items()
        }

    def _load_client_modules(self, state: dict[str, Tensor]) -> None:
        for prefix, m in self._averaged().items():
            sub = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
            m.load_state_dict(sub)

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
    def client_round(self, client_id: int, wire_state: dict[str, Tensor], measure: bool) -> tuple[
        dict[str, Tensor], list[Upload], list[float]
    ]:
        """Client `client_id`'s whole round: receive the model, h local steps, send it back."""
        cfg = self.cfg
        self._load_client_modules(wire_state)  # casts the wire copy up to the workspace's fp32
        self.model.client.train()
        if self.model.aux is not None:
            self.model.aux.train()
        c = ClientState(client_id, self.round, self.model.client, self.model.aux, None)
        c.optimizer = self.algo.new_client_optimizer(c)
        batches = round_batches(
            self.parts[client_id],
            cfg.train.batch_size,
            cfg.train.local_steps,
            generator(cfg.seed, "batches", self.round, client_id),
        )
        aug = generator(cfg.seed, "augment", self.round, client_id)
        uploads: list[Upload] = []
        for step, idx in enumerate(batches):
            c.step = step
            batch = self.make_batch(idx, aug)
            if measure and step == self._measure_at():
                up, down, self.step_cost = measure_local_step(self.algo, c, batch, self.server)
            else:
                up, down = local_step(self.algo, c, batch, self.server)
            if up is not None:
                self.comm.add("up", "activations", [up.activations])
                self.comm.add("up", "labels", [up.labels])
                if not self.algo.sends_gradients:
                    uploads.append(up)
            if down is not None:
                self.comm.add("down", "gradients", [down.gradient])
        state = to_wire(self._client_modules_state(), self.algo.wire_dtype)
        self.comm.add("up", "model", state.values())
        return state, uploads, c.losses

    def server_schedule(self, queues: dict[int, list[Upload]]) -> Iterator[Upload]:
        """Round-robin interleaving of clients' uploads (default), or client by client."""
        if self.cfg.train.server_order == "client-by-client":
            for cid in sorted(queues):
                yield from queues[cid]
            return
        longest = max((len(q) for q in queues.values()), default=0)
        for i in range(longest):
            for cid in sorted(queues):
                if i < len(queues[cid]):
                    yield queues[cid][i]

    def run_round(self) -> dict[str, Any]:
        self.round += 1
        cfg = self.cfg
        t0 = time.perf_counter()
        clients = list(range(cfg.clients))
        if self.algo.sends_gradients:  # SFLV2: clients take turns in a seeded random order
            order = numpy_rng(cfg.seed, "order", self.round).permutation(clients).tolist()
        else:
            order = clients
        wire_state = to_wire(self.global_state, self.algo.wire_dtype)
        avg = WeightedAverage()
        queues: dict[int, list[Upload]] = {}
        client_losses: list[float] = []
        n_server_before = len(self.server.losses)
        for i, cid in enumerate(order):
            self.comm.add("down", "model", wire_state.values())
            state, uploads, losses = self.client_round(
                cid, wire_state, measure=self.step_cost is None and i == 0
            )
            weight = 1.0 if cfg.train.aggregation == "uniform" else float(len(self.parts[cid]))
            avg.add(state, weight)
            queues[cid] = uploads
            client_losses += losses
        self.model.server.train()
        for up in self.server_schedule(queues):
            self.algo.server_step(self.server, up)
        del queues
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
