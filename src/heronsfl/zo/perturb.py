"""Seeded in-place perturbation (the MeZO trick): u is regenerated from its seed, never stored.

The direction u for one probe is drawn parameter by parameter, in a fixed order, from one
torch.Generator seeded with the probe's seed. So perturbing, restoring and applying the update
each regenerate the same u with at most one parameter-sized temporary alive at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor, nn

Distribution = Literal["gaussian", "sphere"]


def _directions(
    params: Sequence[Tensor], seed: int, distribution: Distribution
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (param, u_param) with u ~ N(0, I), or u uniform on the sphere of radius sqrt(d)."""
    device = params[0].device
    scale = 1.0
    if distribution == "sphere":
        # First pass only to learn ||z||; the second pass regenerates the same z.
        g = torch.Generator(device=device).manual_seed(seed)
        sq = sum(
            float(torch.randn(p.shape, generator=g, device=device, dtype=p.dtype).square().sum())
            for p in params
        )  # .item()-like host syncs, once per parameter tensor
        d = sum(p.numel() for p in params)
        scale = math.sqrt(d / sq)
    g = torch.Generator(device=device).manual_seed(seed)
    for p in params:
        z = torch.randn(p.shape, generator=g, device=device, dtype=p.dtype)
        yield p, (z.mul_(scale) if scale != 1.0 else z)


@torch.no_grad()
def perturb_(
    params: Sequence[Tensor], seed: int, alpha: float, distribution: Distribution = "gaussian"
) -> None:
    """theta += alpha * u(seed), in place.

    Restoring with alpha -> -alpha regenerates the same u. In fp32 the round trip
    fl(fl(θ + αu) - αu) equals θ to within one ulp, not always bit for bit (about 2% of elements
    differ by one ulp at μ=1e-3): exact restoration would need a stored copy of θ or u, which
    is what this scheme avoids. The drift is far below one update step and fully deterministic.
    """
    for p, u in _directions(params, seed, distribution):
        p.add_(u, alpha=alpha)


@torch.no_grad()
def accumulate_grad_(
    params: Sequence[Tensor], seed: int, coeff: float, distribution: Distribution = "gaussian"
) -> None:
    """p.grad += coeff * u(seed): feeds the ZO estimate g*u to a first-order optimizer (Adam)."""
    for p, u in _directions(params, seed, distribution):
        if p.grad is None:
            p.grad = u.mul_(coeff)
        else:
            p.grad.add_(u, alpha=coeff)


@contextmanager
def frozen_batchnorm_stats(*modules: nn.Module | None) -> Iterator[None]:
    """BatchNorm keeps using batch statistics but does not update its running statistics.

    Used for the perturbed forwards of a ZO step: running statistics are updated once per step,
    by the unperturbed forward.
    """
    bns = [
        m
        for mod in modules
        if mod is not None
        for m in mod.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


@contextmanager
def dropout_off(*modules: nn.Module | None) -> Iterator[None]:
    """Dropout disabled for ZO forwards: the two losses must differ only by the perturbation."""
    drops = [
        m
        for mod in modules
        if mod is not None
        for m in mod.modules()
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training
    ]
    for m in drops:
        m.eval()
    try:
        yield
    finally:
        for m in drops:
            m.train()
