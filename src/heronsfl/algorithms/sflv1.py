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

from typing import ClassVar, Literal

from heronsfl.algorithms.sflv2 import SFLV2


class SFLV1(SFLV2):
    name: ClassVar[str] = "sflv1"
    summary: ClassVar[str] = "synchronous SFL with one server copy per client, copies averaged"
    server_schedule: ClassVar[Literal["sequential", "parallel"]] = "parallel"
