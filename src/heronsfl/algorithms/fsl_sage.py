"""FSL-SAGE: federated split learning with server-aligned gradient estimation.

Paper: Nair, Zhang, Wang, Kim, "FSL-SAGE: Accelerating Federated Split Learning via Smashed
Activation Gradient Estimation", ICML 2025 (arXiv 2505.23182), Algorithm 1.

- Client: a = f_c(x); its aux model predicts the cut-layer gradient
  ĝ = ∂CE(aux(a), y)/∂a, and the client back-propagates ĝ through f_c and steps. The aux is
  not trained by the client. Every k-th step (train.upload_every) it uploads (a, y).
- Main server: one FO step per upload (base class), and (a, y) appended to a per-client FIFO
  buffer of fsl_sage.buffer_size samples.
- Every fsl_sage.align_every rounds the server computes the true cut-layer gradients
  g* = ∂CE(f_s(a), y)/∂a on each buffer with its current model, and re-fits that client's aux
  copy by gradient matching: min ‖∂CE(aux(a), y)/∂a − g*‖² (MSE, Adam at fsl_sage.align_lr,
  fsl_sage.align_epochs passes). The re-fitted aux is downloaded to the client (counted).
- Fed-Server: averages the client sub-models only; aux models stay per client.

Deviations from the paper:
- Gradients are matched per sample (CE summed over the batch), so the target does not depend on
  the mini-batch size; the server's BatchNorm running statistics are not updated by the
  gradient-target forwards.
- The optional warm-start round of CSE-FSL is not implemented (#3); aux heads start from the
  common initialisation.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from heronsfl.algorithms.base import (
    ClientState,
    ServerState,
    SplitAlgorithm,
    check_finite,
    head_loss,
    make_optimizer,
    task_loss,
)
from heronsfl.config import config_field as _f
from heronsfl.messages import Batch, Download, Upload
from heronsfl.state import load_prefixed, prefixed_state
from heronsfl.zo.perturb import frozen_batchnorm_stats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FSLSAGEConfig:
    """FSL-SAGE's server-side gradient alignment (Nair et al. 2025)."""

    buffer_size: int = _f(
        1000, "samples of (activations, labels) kept per client (FIFO)", check=">0"
    )
    align_every: int = _f(
        10, "re-fit every client's aux head every this many rounds (l)", check=">0"
    )
    # FSL-SAGE uses 1; a thousand passes over the same buffer only overfit the aux head to it.
    align_epochs: int = _f(1, "passes over the buffer per alignment", check="[1, 1000]")
    align_lr: float = _f(1e-3, "Adam learning rate of the gradient-matching fit", check=">0")
    align_batch_size: int = _f(
        0,
        "samples per gradient-matching step (the reference code: 1000, one step per pass over "
        "its 1000-sample buffer); 0 = train.batch_size",
        check=">=0",
    )


class FSLSAGE(SplitAlgorithm):
    name: ClassVar[str] = "fsl-sage"
    summary: ClassVar[str] = "FO client driven by aux-estimated cut gradients, aux re-aligned"
    sends_gradients: ClassVar[bool] = False
    uses_aux_head: ClassVar[bool] = True
    averages_aux: ClassVar[bool] = False
    config_section: ClassVar[str | None] = "fsl_sage"
    Config: ClassVar[type[FSLSAGEConfig]] = FSLSAGEConfig

    def new_client_optimizer(self, c: ClientState) -> torch.optim.Optimizer | None:
        # Only the client sub-model learns on the client; the aux changes by alignment only.
        return make_optimizer(c.model.parameters(), self.cfg.client_optim)

    def client_step(self, c: ClientState, batch: Batch) -> Upload | None:
        assert c.aux is not None and c.optimizer is not None, "FSL-SAGE needs aux + optimizer"
        acts = c.model(batch.x)  # (B, *cut_shape)
        cut = acts.detach().requires_grad_(True)
        loss = head_loss(c.aux, cut, batch.y)
        # The aux's guess of the server's gradient (backward(inputs=...): only the cut's grad).
        loss.backward(inputs=[cut])
        assert cut.grad is not None, "the aux head must depend on the activations"
        c.optimizer.zero_grad(set_to_none=True)
        acts.backward(cut.grad)

        c.optimizer.step()
        c.losses.append(check_finite(loss.item(), self._where(c), "lower client_optim.lr"))
        return self._upload(c, acts, batch.y) if self.uploads_at(c.step) else None

    # ---------------------------------------------------------------- main server
    def server_step(self, s: ServerState, up: Upload) -> Download | None:
        super().server_step(s, up)
        # FIFO buffer of the most recent fsl_sage.buffer_size samples of this client.
        buffers = s.extra.setdefault("buffers", {})
        acts, labels = up.activations.detach(), up.labels.detach()
        if up.client_id in buffers:
            acts = torch.cat([buffers[up.client_id]["acts"], acts])
            labels = torch.cat([buffers[up.client_id]["labels"], labels])
        n = self.own_config.buffer_size
        buffers[up.client_id] = {"acts": acts[-n:], "labels": labels[-n:]}
        return None

    def personal_state(self, s: ServerState, client_id: int) -> dict[str, Tensor] | None:
        return s.extra.get("aux", {}).get(client_id)

    def end_of_round(
        self, s: ServerState, round_idx: int, personal: dict[str, nn.Module]
    ) -> dict[int, dict[str, Tensor]]:
        """Every align_every rounds: re-fit each client's aux to the server's true gradients."""
        if round_idx % self.own_config.align_every != 0:
            return {}
        aux_store = s.extra.setdefault("aux", {})
        initial = prefixed_state(personal)
        downloads = {}
        buffers = sorted(s.extra.get("buffers", {}).items())
        # Minutes per client at the reference setup on a CPU (100 passes of a double backward):
        # say what the silence after the round's last step is, and how the fit went.
        log.info(
            "round %d: aligning %d clients' aux heads to the server's cut gradients",
            round_idx,
            len(buffers),
        )
        for n, (cid, buf) in enumerate(buffers, 1):
            load_prefixed(personal, aux_store.get(cid, initial))
            t0 = time.perf_counter()
            first, last = self._align(s.model, personal["aux"], buf["acts"], buf["labels"])
            log.info(
                "round %d: aligned client %d's aux head (%d of %d): %d passes over %d samples, "
                "gradient mismatch %.3g -> %.3g, %.1f s",
                round_idx,
                cid,
                n,
                len(buffers),
                self.own_config.align_epochs,
                len(buf["labels"]),
                first,
                last,
                time.perf_counter() - t0,
            )
            aux_store[cid] = {k: v.detach().clone() for k, v in prefixed_state(personal).items()}
            downloads[cid] = aux_store[cid]
        load_prefixed(personal, initial)  # leave the workspace as it was
        return downloads

    def _align(
        self, server: nn.Module, aux: nn.Module, acts: Tensor, labels: Tensor
    ) -> tuple[float, float]:
        """Fit aux's cut gradients to the server's on (acts, labels); the mismatch of the first
        and the last step."""
        cfg: FSLSAGEConfig = self.own_config
        device = next(server.parameters()).device
        acts, labels = acts.to(device=device, dtype=torch.float32), labels.to(device)
        bs = cfg.align_batch_size or self.cfg.train.batch_size
        server.train()
        targets = []
        with frozen_batchnorm_stats(server):
            for i in range(0, len(acts), bs):
                a = acts[i : i + bs].clone().requires_grad_(True)
                loss = task_loss(server(a), labels[i : i + bs], reduction="sum")
                targets.append(torch.autograd.grad(loss, a)[0])  # (b, *cut_shape) per sample
        server.zero_grad(set_to_none=True)
        target = torch.cat(targets)
        aux.train()
        opt = torch.optim.Adam(aux.parameters(), lr=cfg.align_lr)
        first = None
        for _ in range(cfg.align_epochs):
            for i in range(0, len(acts), bs):
                a = acts[i : i + bs].clone().requires_grad_(True)
                loss = task_loss(aux(a), labels[i : i + bs], reduction="sum")
                (g,) = torch.autograd.grad(loss, a, create_graph=True)  # double backward
                mismatch = (g - target[i : i + bs]).square().mean()
                opt.zero_grad(set_to_none=True)
                mismatch.backward()
                opt.step()
                if first is None:
                    first = mismatch.item()
        return first, mismatch.item()  # one host sync each, not one per step
