"""The in-process simulation engine: all clients, the main server and the Fed-Server in one process.

One round:
1. `begin_round`: the Fed-Server's global client (+ aux) state, cast to wire precision.
2. Every client runs h local steps on its own partition (engines/client.py).
   - Decoupled algorithms, `train.server_order = "round-robin"` (default): all clients advance
     one step at a time and the main server consumes that step's uploads in client order, then
     the next step's. Clients never hear from the server during a round, so this equals a
     server consuming a concurrent stream; only the participating clients' states coexist,
     never a round's worth of uploads.
   - `client-by-client`: one client at a time, the server consuming its uploads as they come.
   - Synchronous algorithms (sends_gradients, SFLV2): clients take turns in a seeded random
     order and the server answers each upload at once.
3. `end_round`: the Fed-Server averages the clients' states (streamed), then evaluation: global
   client -> server on the test set, and global client -> aux head.

A networked engine reuses `begin_round`, `consume` and `end_round` as they are.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from heronsfl.aggregation import WeightedAverage, to_wire
from heronsfl.algorithms import get_algorithm
from heronsfl.algorithms.base import (
    IGNORE_INDEX,
    ClientState,
    ServerState,
    SplitAlgorithm,
    make_optimizer,
    task_loss,
)
from heronsfl.config import RunConfig
from heronsfl.data.datasets import ArrayDataset
from heronsfl.data.partition import partition
from heronsfl.engines.client import ClientRun
from heronsfl.engines.step import StepCost
from heronsfl.errors import ConfigError
from heronsfl.messages import Upload
from heronsfl.metrics.comm import CommCounter
from heronsfl.models.split import SplitModel
from heronsfl.progress import RoundProgress
from heronsfl.rng import numpy_rng
from heronsfl.state import load_prefixed, prefixed_state, travelling_state
from heronsfl.tasks import build_split_model, get_task, load_datasets


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


def client_modules(
    model: SplitModel, algo: SplitAlgorithm
) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """A client's modules by role: those the Fed-Server averages (client, and the aux head
    unless each client keeps its own) and those the client keeps for itself. Every engine
    splits them here."""
    averaged: dict[str, nn.Module] = {"client": model.client}
    own: dict[str, nn.Module] = {}
    if algo.uses_aux_head and model.aux is not None:
        (averaged if algo.averages_aux else own)["aux"] = model.aux
    return averaged, own


def new_server_state(server: nn.Module, cfg: RunConfig) -> ServerState:
    """The main server and its one persistent optimizer (none if it has nothing to train)."""
    trainable = any(p.requires_grad for p in server.parameters())
    return ServerState(
        server, make_optimizer(server.parameters(), cfg.server_optim) if trainable else None
    )


def client_partitions(cfg: RunConfig, train_set: ArrayDataset) -> list[np.ndarray]:
    """Every client's sample indices into the training set."""
    labels = train_set.y.numpy()
    if labels.ndim > 1:  # token targets: partitions are over samples, labels do not apply
        labels = np.zeros(len(train_set), dtype=np.int64)
    rng = numpy_rng(cfg.seed, "partition")
    return partition(cfg.data.partition, labels, cfg.clients, rng, cfg.data)


class Simulation:
    """Runs `cfg` round by round; `run_round()` returns one metrics record."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.task = get_task(cfg.task)
        self.algo: SplitAlgorithm = get_algorithm(cfg.algorithm)(cfg)
        self.model = build_split_model(
            cfg, with_aux=self.algo.uses_aux_head, whole=self.algo.trains_whole_model
        ).to(self.device)
        self.test_set = load_datasets(cfg, "test")
        self._train_set: ArrayDataset | None = None
        self._parts: list[np.ndarray] | None = None
        self.server = new_server_state(self.model.server, cfg)
        # The Fed-Server's global state: an fp32 master copy; the template modules only borrow it.
        self.global_state = {
            k: v.detach().clone() for k, v in prefixed_state(self.averaged()).items()
        }
        self.comm = CommCounter()
        self.step_cost: StepCost | None = None
        self.round = 0
        self._t0 = 0.0
        self._wire_state: dict[str, Tensor] = {}
        self._shared: dict[str, nn.Module] = {}
        self.progress = RoundProgress()  # within-round counts; the CLI swaps in a display

        self._server_losses_before = 0

    # Training data is loaded on first use: a networked server never touches it.
    @property
    def train_set(self) -> ArrayDataset:
        if self._train_set is None:
            self._train_set = load_datasets(self.cfg, "train")
        return self._train_set

    @property
    def parts(self) -> list[np.ndarray]:
        """Each client's training-sample indices (seeded; the same in every engine)."""
        if self._parts is None:
            self._parts = client_partitions(self.cfg, self.train_set)
        return self._parts

    def averaged(self) -> dict[str, nn.Module]:
        """The template modules whose state the Fed-Server averages (prefix -> module)."""
        return client_modules(self.model, self.algo)[0]

    def personal(self) -> dict[str, nn.Module]:
        """Template modules each client keeps for itself (FSL-SAGE's aux heads)."""
        return client_modules(self.model, self.algo)[1]

    # ------------------------------------------------------------------ one round
    def begin_round(self) -> dict[str, Tensor]:
        """Start the next round; returns the global state as broadcast (wire precision)."""
        self.round += 1
        self._t0 = time.perf_counter()
        self._server_losses_before = len(self.server.losses)
        self.model.server.train()
        travel = travelling_state(self.averaged()).keys()
        self._wire_state = to_wire(
            {k: v for k, v in self.global_state.items() if k in travel}, self.algo.wire_dtype
        )

        return self._wire_state

    def client_run(self, client_id: int, wire_state: dict[str, Tensor], measure: bool) -> ClientRun:
        """Client `client_id`'s round, on fresh copies of the template modules."""
        # One deepcopy of all of them: weights they share (a tied embedding) stay shared.
        both = copy.deepcopy({**self.averaged(), **self.personal()})
        modules = {k: both[k] for k in self.averaged()}
        own = {k: both[k] for k in self.personal()}

        state = self.algo.personal_state(self.server, client_id)
        if state is not None:  # as the client last received it: at wire precision
            load_prefixed(own, to_wire(state, self.algo.wire_dtype))

        server = self.server
        if self.algo.server_schedule == "parallel":  # SFLV1: this client's own server copy
            server = new_server_state(copy.deepcopy(self.model.server), self.cfg)
        return ClientRun(
            self.algo,
            self.task,
            self.train_set,
            self.parts[client_id],
            self.round,
            client_id,
            {**modules, **own},
            wire_state,
            self.device,
            server=server,
            measure=measure,
            sends=set(modules),
            progress=self.progress,
        )

    def participants(self) -> list[int]:
        """This round's clients: all, or a seeded sample (train.clients_per_round or
        train.client_fraction), the same in every engine."""
        t, n = self.cfg.train, self.cfg.clients
        count = t.clients_per_round or max(1, round(t.client_fraction * n))
        if count >= n:
            return list(range(n))
        rng = numpy_rng(self.cfg.seed, "participation", self.round)
        return sorted(rng.choice(n, size=count, replace=False).tolist())

    def consume(self, up: Upload) -> None:
        """The main server's step on one upload (decoupled algorithms)."""
        self.algo.server_step(self.server, up)
        self.progress.server_step()

    def run_round(self) -> dict[str, Any]:
        cfg = self.cfg
        wire_state = self.begin_round()
        clients = self.participants()
        self.progress.start(self.round, len(clients), cfg.train.local_steps)

        def runs(order: list[int]) -> Iterator[ClientRun]:
            # Lazy: under sequential orders only one client's modules exist at a time.
            for i, cid in enumerate(order):
                yield self.client_run(cid, wire_state, measure=self.step_cost is None and i == 0)

        done: list[ClientRun] = []
        if self.algo.server_schedule == "parallel":
            # SFLV1: each client trains with its own server copy; the copies are averaged like
            # the clients (streamed, so one copy exists at a time in this process).
            server_avg = WeightedAverage()
            for run in runs(clients):
                run.drain()
                assert run.server is not None, "a parallel-schedule client has its server copy"
                server_avg.add(run.server.model.state_dict(), self._weight(run))
                self.server.losses += run.server.losses
                run.server = None
                done.append(run)
            self.model.server.load_state_dict(
                server_avg.result(like=self.model.server.state_dict())
            )
        elif self.algo.shared_client_model:
            done = self._shared_model_round(clients)
        elif self.algo.sends_gradients:  # SFLV2: turns in a seeded random order, inline answers
            perm = numpy_rng(cfg.seed, "order", self.round).permutation(len(clients))
            for run in runs([clients[i] for i in perm]):
                run.drain()
                done.append(run)

        elif cfg.train.server_order == "client-by-client":
            for run in runs(clients):
                for up in run:
                    if up is not None:
                        self.consume(up)
                done.append(run)
        else:  # round-robin lockstep
            done = list(runs(clients))
            for step_uploads in zip(*done, strict=True):
                for up in step_uploads:
                    if up is not None:
                        self.consume(up)
        self.progress.end()
        return self.end_round(done)

    def client_state(self, run: ClientRun) -> dict[str, Tensor]:
        """A finished client's state as the Fed-Server sees it: as uploaded, or (seeds exchange)
        rebuilt by replaying its steps from this round's broadcast state."""
        assert run.state is not None, "a finished client run holds its state"
        if run.zo_seeds is None or run.zo_scalars is None:
            return run.state
        mods = self.averaged()  # the template modules serve as the replay workspace
        load_prefixed(mods, self._wire_state)
        c = ClientState(run.client_id, self.round, mods["client"], mods.get("aux"), None)
        c.optimizer = self.algo.new_client_optimizer(c)
        replay = getattr(self.algo, "replay", None)
        assert replay is not None, f"{self.algo.name} cannot replay seeds"
        replay(c, run.zo_seeds.tolist(), run.zo_scalars.tolist())
        return {**travelling_state(mods), **run.state}

    def _shared_model_round(self, clients: list[int]) -> list[ClientRun]:
        """HO-SFL: every client holds the same client model and applies the same broadcast
        update after each step, so one module set serves them all and no parameters travel."""
        shared = {k: copy.deepcopy(m) for k, m in self.averaged().items()}
        load_prefixed(shared, self.global_state)
        runs = [
            ClientRun(
                self.algo,
                self.task,
                self.train_set,
                self.parts[cid],
                self.round,
                cid,
                shared,
                {},  # nothing is broadcast: the clients already hold the model
                self.device,
                server=self.server,
                measure=self.step_cost is None and i == 0,
                sends=set(),
                progress=self.progress,
            )
            for i, cid in enumerate(clients)
        ]
        for _ in zip(*runs, strict=True):
            states = [run.client for run in runs]
            assert all(s is not None for s in states), "clients are mid-round"
            mean = self.algo.synchronize(states)  # type: ignore[arg-type]
            for run, state in zip(runs, states, strict=True):
                assert state is not None, "clients are mid-round"
                run.comm.add("up", "zo_scalars", [torch.tensor(state.zo_record[-1][1])])
                run.comm.add("down", "zo_scalars", [mean])
        self._shared = shared
        return runs

    def _weight(self, run: ClientRun) -> float:

        return 1.0 if self.cfg.train.aggregation == "uniform" else float(run.num_samples)

    def end_round(self, runs: Sequence[ClientRun]) -> dict[str, Any]:
        """Fed-Server aggregation of the finished client runs, evaluation, the round's record."""
        cfg = self.cfg
        avg = WeightedAverage()
        client_losses: list[float] = []
        for run in runs:
            assert run.state is not None, "a finished client run holds its state"
            if run.state or run.zo_seeds is not None:  # a shared-model client sends no state
                avg.add(self.client_state(run), self._weight(run))

            client_losses += run.losses
            for key, nbytes in run.comm.bytes.items():
                self.comm.bytes[key] += nbytes
            if run.step_cost is not None:
                self.step_cost = run.step_cost
        if self.algo.shared_client_model:
            self.global_state = {
                k: v.detach().clone() for k, v in prefixed_state(self._shared).items()
            }
        else:
            self.global_state = avg.result(like=self.global_state)

        # Server work after the round (FSL-SAGE's alignment) and what it sends each client.
        for state in self.algo.end_of_round(self.server, self.round, self.personal()).values():
            self.comm.add("down", "aux", to_wire(state, self.algo.wire_dtype).values())

        server_losses = self.server.losses[self._server_losses_before :]
        record: dict[str, Any] = {"round": self.round}
        if self.round % cfg.train.eval_every == 0 or self.round == cfg.rounds:
            ev = self.evaluate()
            record["test/accuracy"] = ev.accuracy
            record["test/loss"] = ev.loss
            if self.task.reports_perplexity:
                record["test/perplexity"] = math.exp(min(ev.loss, 50.0))
            if ev.aux_accuracy is not None:
                record["aux/accuracy"] = ev.aux_accuracy
        if client_losses:
            record["train/client_loss"] = sum(client_losses) / len(client_losses)
        if server_losses:
            record["train/server_loss"] = sum(server_losses) / len(server_losses)
        record.update(self.comm.as_metrics())
        if self.step_cost is not None:
            record["client/peak_mem_bytes"] = self.step_cost.peak_mem_bytes
            record["client/macs_per_step"] = self.step_cost.flops / 2
            record["client/flops_per_step"] = self.step_cost.flops
        record["round_s"] = time.perf_counter() - self._t0
        return record

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after the current round: tensors and plain values."""
        sc = self.step_cost
        return {
            "round": self.round,
            "global_state": self.global_state,
            "server_model": self.model.server.state_dict(),
            "server_optimizer": None
            if self.server.optimizer is None
            else self.server.optimizer.state_dict(),
            "comm": self.comm.state_dict(),
            "server_extra": self.server.extra,
            "step_cost": None if sc is None else dataclasses.asdict(sc),
        }

    def client_snapshot(self) -> dict[str, Tensor]:
        """The global client sub-model's state (no aux head): what an attacker would hold."""
        return {k: v for k, v in self.global_state.items() if k.startswith("client.")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round = int(state["round"])
        self.global_state = {k: v.to(self.device) for k, v in state["global_state"].items()}
        self.model.server.load_state_dict(state["server_model"])
        if self.server.optimizer is not None and state["server_optimizer"] is not None:
            self.server.optimizer.load_state_dict(state["server_optimizer"])
        self.comm.load_state_dict(state["comm"])
        self.server.extra = state["server_extra"]

        sc = state["step_cost"]
        self.step_cost = None if sc is None else StepCost(**sc)

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> EvalResult:
        """Global client -> server (test/accuracy) and global client -> aux (aux/accuracy)."""
        load_prefixed(self.averaged(), self.global_state)
        # aux/accuracy: the averaged aux head; per-client heads (FSL-SAGE) are not evaluated.
        has_aux = "aux" in self.averaged()

        for m in (self.model.client, self.model.server, self.model.aux):
            if m is not None:
                m.eval()
        correct = aux_correct = counted = 0
        loss_sum = 0.0
        bs = self.cfg.train.eval_batch_size
        for start in range(0, len(self.test_set), bs):
            x = self.task.preprocess(self.test_set.x[start : start + bs], False, False, None)
            y = self.test_set.y[start : start + bs].to(self.device)
            acts = self.model.client(x.to(self.device))  # (B, *cut_shape)
            logits = self.model.server(acts)  # (B, K) or (B, T, V)
            valid = y != IGNORE_INDEX  # every sample of a classifier, the target tokens of an LM
            counted += int(valid.sum())  # host syncs: once per eval batch
            loss_sum += float(task_loss(logits, y, reduction="sum"))
            correct += int(((logits.argmax(-1) == y) & valid).sum())
            if has_aux:
                assert self.model.aux is not None, "has_aux implies an aux head"
                aux_correct += int(((self.model.aux(acts).argmax(-1) == y) & valid).sum())
        n = max(counted, 1)
        return EvalResult(correct / n, loss_sum / n, aux_correct / n if has_aux else None)

    def run(self, on_round: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        records = []
        for _ in range(self.cfg.rounds):
            record = self.run_round()
            records.append(record)
            if on_round is not None:
                on_round(record)
        return records
