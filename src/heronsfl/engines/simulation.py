"""The in-process simulation engine: every client in the process of the federation core.

One round (the core, federation.py, does steps 1 and 3):
1. `begin_round`: the Fed-Server's global client (+ aux) state, cast to wire precision.
2. Every client runs h local steps on its own partition (engines/client.py).
   - Decoupled algorithms, `train.server_order = "round-robin"` (default): all clients advance
     one step at a time and the main server consumes that step's uploads in client order, then
     the next step's. Clients never hear from the server during a round, so this equals a
     server consuming a concurrent stream; only the participating clients' states coexist,
     never a round's worth of uploads.
   - `client-by-client`: one client at a time, the server consuming its uploads as they come.
   - Synchronous algorithms (sends_gradients): clients take turns in the algorithm's
     `turn_order`, each with the server state the core hands out (SFLV1: its own copy), and
     the server answers each upload at once.
   - Shared-model algorithms (HO-SFL): all clients advance one step at a time on one module
     set, and the algorithm's `synchronize` runs after every step.
3. `end_round`: the algorithm aggregates the clients' results, then evaluation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from torch import Tensor

from heronsfl.config import RunConfig
from heronsfl.data.datasets import ArrayDataset
from heronsfl.data.partition import partition
from heronsfl.engines.client import ClientRun
from heronsfl.federation import EvalResult, Federation, resolve_device
from heronsfl.messages import ClientResult
from heronsfl.rng import numpy_rng
from heronsfl.state import load_prefixed
from heronsfl.tasks import load_datasets

__all__ = ["EvalResult", "Simulation", "client_partitions", "resolve_device"]


def client_partitions(cfg: RunConfig, train_set: ArrayDataset) -> list[np.ndarray]:
    """Every client's sample indices into the training set."""
    labels = train_set.y.numpy()
    if labels.ndim > 1:  # token targets: partitions are over samples, labels do not apply
        labels = np.zeros(len(train_set), dtype=np.int64)
    rng = numpy_rng(cfg.seed, "partition")
    return partition(cfg.data.partition, labels, cfg.clients, rng, cfg.data)


class Simulation(Federation):
    """Runs `cfg` round by round in one process; `run_round()` returns one metrics record."""

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self._train_set: ArrayDataset | None = None
        self._parts: list[np.ndarray] | None = None

    # Training data is loaded on first use.
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

    def client_run(self, client_id: int, wire_state: dict[str, Tensor], measure: bool) -> ClientRun:
        """Client `client_id`'s round, on fresh copies of the template modules."""
        # One deepcopy of all of them: weights they share (a tied embedding) stay shared.
        both = copy.deepcopy({**self.averaged(), **self.personal()})
        modules = {k: both[k] for k in self.averaged()}
        own = {k: both[k] for k in self.personal()}
        state = self.personal_state(client_id)
        if state is not None:  # as the client last received it: at wire precision
            load_prefixed(own, state)
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
            server=self.server_for(client_id),
            measure=measure,
            sends=set(modules),
            progress=self.progress,
        )

    def run_round(self) -> dict[str, Any]:
        algo = self.algo
        wire_state = self.begin_round()
        clients = self.participants()
        self.progress.start(self.round, len(clients), self.cfg.train.local_steps)

        def runs(order: list[int]) -> Iterator[ClientRun]:
            # Lazy: under sequential orders only one client's modules exist at a time.
            for i, cid in enumerate(order):
                yield self.client_run(cid, wire_state, measure=self.step_cost is None and i == 0)

        results: list[ClientResult] = []
        if algo.shared_client_model:
            results = self._shared_model_round(clients)
        elif algo.sends_gradients:  # turns, the server answering each upload inline
            for run in runs(algo.turn_order(clients, self.round)):
                run.drain()
                assert run.server is not None, "a synchronous client has its server"
                self.client_done(run.server, run.finished())
                run.server = None
                results.append(run.finished())
        elif self.cfg.train.server_order == "client-by-client":
            for run in runs(clients):
                for up in run:
                    if up is not None:
                        self.consume(up)
                results.append(run.finished())
        else:  # round-robin lockstep
            done = list(runs(clients))
            for step_uploads in zip(*done, strict=True):
                for up in step_uploads:
                    if up is not None:
                        self.consume(up)
            results = [run.finished() for run in done]
        self.progress.end()
        return self.end_round(results)

    def _shared_model_round(self, clients: list[int]) -> list[ClientResult]:
        """HO-SFL: every client holds the same client model and applies the same broadcast
        update after each step, so one module set (the template's) serves them all and no
        parameters travel; the algorithm's aggregate reads the new model from it."""
        shared = self.averaged()
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
                server=self.server_for(cid),
                measure=self.step_cost is None and i == 0,
                sends=set(),
                progress=self.progress,
            )
            for i, cid in enumerate(clients)
        ]
        for _ in zip(*runs, strict=True):
            states = [run.client for run in runs]
            assert all(s is not None for s in states), "clients are mid-round"
            self.algo.synchronize(states, [run.comm for run in runs])  # type: ignore[arg-type]
        return [run.finished() for run in runs]

    def run(self, on_round: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        records = []
        for _ in range(self.cfg.rounds):
            record = self.run_round()
            records.append(record)
            if on_round is not None:
                on_round(record)
        return records
