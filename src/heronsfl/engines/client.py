"""A client's round, as every engine runs it: receive the global state, h local steps, reply.

`ClientRun` knows nothing of the process it runs in: the simulator drives many of them in one
process, a networked client drives one on its own data. Everything it derives (batch order,
augmentation, ZO directions) comes from the seed tree, so both engines compute the same thing.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from heronsfl.aggregation import to_wire
from heronsfl.algorithms.base import ClientState, SplitAlgorithm
from heronsfl.data.datasets import ArrayDataset
from heronsfl.data.sampler import round_batches
from heronsfl.engines.step import Server, local_step, measure_local_step
from heronsfl.messages import Batch, ClientResult, StepCost, Upload
from heronsfl.metrics.comm import CommCounter
from heronsfl.progress import RoundProgress
from heronsfl.rng import generator
from heronsfl.state import load_prefixed
from heronsfl.tasks import Task


def measured_step(algo: SplitAlgorithm, local_steps: int) -> int:
    """The local step whose cost is reported: a decoupled client's first upload step (its
    costliest), a synchronous client's second step (optimizer state exists by then)."""
    if algo.sends_gradients:
        return min(1, local_steps - 1)
    return algo.cfg.train.upload_every - 1


class ClientRun:
    """One client's round, one local step per iteration; yields the step's upload (or None).

    The client trains its own modules, loaded from the wire copy of the global state. When the
    iteration ends, `result` holds the typed `ClientResult` it hands the Fed-Server: what it
    sends back (built by the algorithm's `client_payload`), its local losses, the bytes it
    sent and received and the measured step, if any. A synchronous algorithm needs the main
    server: its state in the same process, or a function that asks a remote one (`server`).
    """

    def __init__(
        self,
        algo: SplitAlgorithm,
        task: Task,
        data: ArrayDataset,
        indices: np.ndarray,
        round_idx: int,
        client_id: int,
        modules: dict[str, nn.Module],
        wire_state: dict[str, Tensor],
        device: torch.device,
        server: Server | None = None,
        measure: bool = False,
        sends: set[str] | None = None,
        progress: RoundProgress | None = None,
    ) -> None:

        if algo.sends_gradients and server is None:
            raise ValueError(f"{algo.name} needs the main server for every step")
        self.algo, self.task, self.data, self.indices = algo, task, data, indices
        self.round, self.client_id, self.device, self.server = round_idx, client_id, device, server
        self.modules = modules
        # The modules whose state goes back to the Fed-Server (default: all of them).
        self.sends = set(modules) if sends is None else sends
        # Casts the wire copy up to the modules' fp32; modules it does not cover keep theirs.
        load_prefixed({k: m for k, m in modules.items() if k in self.sends}, wire_state)

        self.measure = measure
        self.progress = progress or RoundProgress()  # counts steps; shows them if a display
        self.num_samples = len(indices)
        self.comm = CommCounter()
        self.comm.add("down", "model", wire_state.values())
        self.step_cost: StepCost | None = None
        self.client: ClientState | None = None  # while iterating (a shared-model step reads it)
        self.result: ClientResult | None = None  # when the iteration has ended

    def _batch(self, idx: Tensor, gen: torch.Generator) -> Batch:
        x = self.task.preprocess(self.data.x[idx], True, self.algo.cfg.data.augment, gen)
        return Batch(x.to(self.device), self.data.y[idx].to(self.device))

    def __iter__(self) -> Iterator[Upload | None]:
        algo, cfg = self.algo, self.algo.cfg
        client = self.modules["client"].train()
        aux = self.modules["aux"].train() if "aux" in self.modules else None
        c = ClientState(self.client_id, self.round, client, aux, None)
        c.optimizer = algo.new_client_optimizer(c)
        self.client = c  # a shared-model engine reads each client's per-step scalars

        seed = cfg.seed
        batches = round_batches(
            self.indices,
            cfg.train.batch_size,
            cfg.train.local_steps,
            generator(seed, "batches", self.round, self.client_id),
        )
        aug = generator(seed, "augment", self.round, self.client_id)
        at = measured_step(algo, cfg.train.local_steps) if self.measure else -1
        for step, idx in enumerate(batches):
            c.step = step
            batch = self._batch(idx, aug)
            if step == at:
                up, down, self.step_cost = measure_local_step(algo, c, batch, self.server)
            else:
                up, down = local_step(algo, c, batch, self.server)
            if up is not None:
                self.comm.add("up", "activations", [up.activations])
                self.comm.add("up", "labels", [up.labels])
            if down is not None:
                self.comm.add("down", "gradients", [down.gradient])
                self.progress.server_step()  # a synchronous server answered in this step
            self.progress.client_step()
            yield up
        self.progress.client_done()
        sent = {k: m for k, m in self.modules.items() if k in self.sends}
        state, exchange = algo.client_payload(c, sent)
        if exchange:
            self.comm.add("up", algo.exchange_kind, exchange.values())
        wire = to_wire(state, algo.wire_dtype)
        self.comm.add("up", "model", wire.values())
        self.result = ClientResult(
            self.client_id, self.num_samples, wire, exchange, c.losses, self.comm, self.step_cost
        )

        self.modules = {}  # free the client's modules and optimizer before the next client
        self.client = None

    def drain(self) -> list[Upload]:
        """Run to the end and return the uploads (a decoupled client's whole round)."""
        return [up for up in self if up is not None]

    def finished(self) -> ClientResult:
        """The result of the ended round."""
        assert self.result is not None, "a client run holds its result once it has ended"
        return self.result
