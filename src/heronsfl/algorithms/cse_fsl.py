"""CSE-FSL: communication- and storage-efficient federated split learning (local loss, FO).

Paper: Mu & Shen, "Communication and Storage Efficient Federated Split Learning" (2025, IEEE
TMC; arXiv 2302.05599). Like HERON-SFL, each client trains its sub-model plus an auxiliary head on
a local loss and uploads activations every k steps without waiting for the server, but with
first-order backprop: one forward and one backward (about 3 forwards of compute) per step, and
the forward activations stored for the backward. The aux head is averaged with the client.

Deviations from the paper: none intended; the server consumes uploads one step per batch (as in
HERON-SFL) rather than in the paper's server-side batching of several clients.
"""

from __future__ import annotations

from typing import ClassVar

from heronsfl.algorithms.base import ClientState, SplitAlgorithm, check_finite, head_loss
from heronsfl.messages import Batch, Upload
from heronsfl.privacy.defenses import nopeek_penalty


class CSEFSL(SplitAlgorithm):
    name: ClassVar[str] = "cse-fsl"
    summary: ClassVar[str] = "FO client + aux head (backprop), FO server, upload every k"
    sends_gradients: ClassVar[bool] = False
    uses_aux_head: ClassVar[bool] = True
    supports_nopeek: ClassVar[bool] = True

    def client_step(self, c: ClientState, batch: Batch) -> Upload | None:
        assert c.aux is not None and c.optimizer is not None, "CSE-FSL needs aux + optimizer"
        acts = c.model(batch.x)  # (B, *cut_shape)
        loss = head_loss(c.aux, acts, batch.y)
        penalty = nopeek_penalty(self.cfg, batch.x, acts)  # privacy.nopeek_weight
        if penalty is not None:
            loss = loss + penalty
        c.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        c.optimizer.step()
        c.losses.append(check_finite(loss.item(), self._where(c), "lower client_optim.lr"))
        return self._upload(c, acts, batch.y) if self.uploads_at(c.step) else None
