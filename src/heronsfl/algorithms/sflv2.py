"""SFLV2: SplitFed learning, version 2 (sequential server, synchronous gradients).

Paper: Thapa, Chamikara, Camtepe, Sun, "SplitFed: When Federated Learning Meets Split Learning",
AAAI 2022 (arXiv 2004.12088), Algorithm for SFLV2. Clients take turns (a seeded random order
each round) on one server model: per batch the client uploads its activations, the server does
forward, backward and a step, and returns dLoss/d activations; the client back-propagates them
and steps. The Fed-Server averages the client sub-models at the end of the round.

Deviations from the paper's code:
- One persistent server optimizer; the reference implementation re-creates Adam every batch,
  which resets its moments (a bug, not part of the method).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from heronsfl.algorithms.base import ClientState, SplitAlgorithm
from heronsfl.messages import Batch, Download, Upload
from heronsfl.privacy.defenses import nopeek_penalty
from heronsfl.rng import numpy_rng


class SFLV2(SplitAlgorithm):
    name: ClassVar[str] = "sflv2"
    summary: ClassVar[str] = "synchronous SFL: server returns cut gradients every batch"
    sends_gradients: ClassVar[bool] = True
    uses_aux_head: ClassVar[bool] = False
    supports_nopeek: ClassVar[bool] = True

    def client_step(self, c: ClientState, batch: Batch) -> Upload | None:
        acts = c.model(batch.x)  # (B, *cut_shape); the graph stays alive until the gradient
        c.pending = acts
        if self.cfg.privacy.nopeek_weight > 0:
            c.pending_input = batch.x  # for the NoPeek penalty, once the gradient arrives
        return self._upload(c, acts, batch.y)

    def client_apply(self, c: ClientState, down: Download) -> None:
        assert c.pending is not None, "client_apply without a pending forward"
        assert c.optimizer is not None, "an FO client needs its optimizer"
        c.optimizer.zero_grad(set_to_none=True)
        grad = down.gradient.to(c.pending)  # to the client's dtype and device
        penalty = None
        if c.pending_input is not None:
            penalty = nopeek_penalty(self.cfg, c.pending_input, c.pending)
        if penalty is None:
            c.pending.backward(grad)
        else:  # d(server loss)/dθ through the returned gradient, plus d(penalty)/dθ
            torch.autograd.backward([c.pending, penalty], [grad, None])
        c.pending_input = None
        c.optimizer.step()
        c.pending = None

    def turn_order(self, clients: list[int], round_idx: int) -> list[int]:
        """Clients take turns on the one server model in a seeded random order."""
        perm = numpy_rng(self.cfg.seed, "order", round_idx).permutation(len(clients))
        return [clients[i] for i in perm]
