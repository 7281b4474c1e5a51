"""SFLV1: SplitFed learning, version 1 (parallel server copies, synchronous gradients).

Paper: Thapa, Chamikara, Camtepe, Sun, "SplitFed: When Federated Learning Meets Split Learning",
AAAI 2022 (arXiv 2004.12088), Algorithm 1. The main server keeps one copy of its sub-model per
client; all clients train in parallel, each exchanging activations and cut-layer gradients with
its own copy every batch. At the end of the round the Fed-Server averages the client sub-models
and the main server averages its copies.

The client code is SFLV2's; only the server schedule differs (data on the class).

Deviations from the paper:
- Each server copy starts the round from the averaged server model with a fresh optimizer
  (the paper does not say how server optimizer state is kept across rounds).
- Copies are trained one client after another in this process; since they are independent, the
  result equals parallel training.
"""

from __future__ import annotations

import copy
from typing import ClassVar, Literal

from heronsfl.aggregation import WeightedAverage
from heronsfl.algorithms.base import ServerRound, ServerState, SplitAlgorithm
from heronsfl.algorithms.sflv2 import SFLV2
from heronsfl.messages import ClientResult


class ParallelServers(ServerRound):
    """One server copy per client, from the round's server model with a fresh optimizer; the
    copies are averaged like the clients (streamed: one copy exists at a time in a simulator)."""

    def __init__(self, algo: SplitAlgorithm, server: ServerState) -> None:
        super().__init__(algo, server)
        self.average = WeightedAverage()

    def for_client(self, client_id: int) -> ServerState:
        return self.algo.new_server_state(copy.deepcopy(self.server.model))

    def client_done(self, server: ServerState, result: ClientResult) -> None:
        self.average.add(server.model.state_dict(), self.algo.weight(result))
        self.server.losses += server.losses

    def end(self) -> None:
        model = self.server.model
        model.load_state_dict(self.average.result(like=model.state_dict()))


class SFLV1(SFLV2):
    name: ClassVar[str] = "sflv1"
    summary: ClassVar[str] = "synchronous SFL with one server copy per client, copies averaged"
    server_schedule: ClassVar[Literal["sequential", "parallel"]] = "parallel"

    def begin_server_round(self, s: ServerState) -> ServerRound:
        return ParallelServers(self, s)

    def turn_order(self, clients: list[int], round_idx: int) -> list[int]:
        return clients  # the copies are independent: any order computes the same
