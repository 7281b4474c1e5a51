"""Defenses of the uploaded activations (`[privacy]` in the config).

- Noise (`privacy.noise_std`, optionally after `privacy.clip_norm`): each sample's activations
  are clipped to an L2 norm bound, then Gaussian noise is added to every element, on the copy
  that is uploaded; the client's own local loss keeps the clean activations. The noise is drawn
  from the seed tree, (seed, "privacy", round, client, step), so runs stay reproducible and no
  global RNG is touched. This is the Gaussian mechanism's shape, but no privacy budget is
  claimed: the per-sample sensitivity of a batch-statistics network is not bounded by the clip.
- NoPeek (Vepakomma et al., "NoPeek: Information leakage reduction to share activations in
  distributed deep learning", arXiv 2008.09161): the client adds
  `nopeek_weight * dCor(inputs, activations)` to its local loss. The penalty is a function of one
  forward pass, so a zeroth-order client minimises it with forward passes alone: it is simply
  part of the loss its finite differences measure.

Off (all zero, the default), nothing here runs and training is bit-identical to a run without
the `[privacy]` section.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from heronsfl.config import PrivacyConfig, RunConfig
from heronsfl.rng import generator

if TYPE_CHECKING:
    from heronsfl.algorithms.base import ClientState


def protects_uploads(cfg: PrivacyConfig) -> bool:
    return cfg.noise_std > 0 or cfg.clip_norm > 0


@torch.no_grad()
def clip_and_noise(
    activations: Tensor, clip_norm: float, noise_std: float, gen: torch.Generator | None
) -> Tensor:
    """Per-sample clip to L2 norm `clip_norm` (0 = no clip), then add N(0, noise_std²) noise.

    activations: (B, ...) fp32. Returns a new tensor; the input is not modified.
    """
    out = activations.detach().float().clone()
    if clip_norm > 0:
        norms = out.flatten(1).norm(dim=1).clamp_min(1e-12)  # (B,)
        scale = (clip_norm / norms).clamp(max=1.0)
        out.mul_(scale.view(-1, *([1] * (out.dim() - 1))))
    if noise_std > 0:
        # Drawn on the CPU from a CPU generator: the same noise on every device.
        noise = torch.randn(out.shape, generator=gen, dtype=torch.float32)
        out.add_(noise.to(out.device), alpha=noise_std)
    return out


def protect_upload(cfg: RunConfig, c: ClientState, activations: Tensor) -> Tensor:
    """The activations as the client uploads them: unchanged when no defense is on."""
    pv = cfg.privacy
    if not protects_uploads(pv):
        return activations
    gen = generator(cfg.seed, "privacy", c.round, c.client_id, c.step)
    return clip_and_noise(activations, pv.clip_norm, pv.noise_std, gen)


def _double_centered_distances(a: Tensor) -> Tensor:
    """(B, D) -> (B, B) Euclidean distance matrix, double-centred (rows, columns, mean)."""
    gram = a @ a.T  # (B, B)
    sq = gram.diagonal()
    # +eps inside the root: the diagonal is 0 and sqrt'(0) is infinite.
    d = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(0).add(1e-12).sqrt()
    return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()


def distance_correlation(x: Tensor, z: Tensor) -> Tensor:
    """Sample distance correlation dCor(x, z) in [0, 1] over a batch (Székely et al. 2007).

    x: (B, ...) inputs, z: (B, ...) activations; each sample is flattened. 0 means the batch's
    pairwise distances in z carry no (linear or not) dependence on those in x. Differentiable.
    """
    a = _double_centered_distances(x.flatten(1).float())
    b = _double_centered_distances(z.flatten(1).float())
    dcov_xz = (a * b).mean()
    dvar = ((a * a).mean() * (b * b).mean()).sqrt().clamp_min(1e-12)
    return (dcov_xz / dvar).clamp_min(1e-12).sqrt()


def nopeek_penalty(cfg: RunConfig, x: Tensor, activations: Tensor) -> Tensor | None:
    """nopeek_weight * dCor(x, activations), to add to the client's local loss; None when off."""
    w = cfg.privacy.nopeek_weight
    return None if w <= 0 else w * distance_correlation(x, activations)
