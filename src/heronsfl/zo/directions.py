"""Structured zeroth-order directions: what u looks like, always regenerated from seeds.

With one dense two-point probe in d dimensions the estimate's signal-to-noise is about
1/sqrt(d), so a ZO client with many parameters barely moves. The structured directions below
shrink the effective d or give u a shape that fits weight matrices; every one is drawn from the
probe's seed (and the step's index and lazy V seed), so perturbing, restoring, updating and the
Fed-Server's seeds-exchange replay regenerate the same u, and nothing of parameter size
travels. Chosen by `zo.perturbation`:

- dense: u ~ N(0, I) over every parameter (MeZO, arXiv 2305.17333): the reference.
- lowrank: for each weight matrix W (m x n; a conv kernel (out, in, kh, kw) as out x in*kh*kw)
  u = U Vᵀ / sqrt(r), U (m x r) drawn from the probe's seed, V (n x r) from a seed shared by
  the probes of ν = zo.v_every consecutive local steps (LOZO's lazy sampling, Chen et al.,
  "Enhancing Zeroth-order Fine-tuning for Language Models with Low-rank Structures",
  arXiv 2410.07698; SubZero, Yu et al., arXiv 2410.08989, projects onto low-rank subspaces in
  the same spirit). Vectors (biases, norms) stay dense. The 1/sqrt(r) keeps E[u_ij²] = 1.
- sparse: only a seeded random subset of coordinates (a fraction zo.density of each tensor)
  moves, u = z ⊙ m / sqrt(density) so that E[u uᵀ] = I still holds.
- sparse-magnitude: only the zo.density smallest-magnitude weights of each tensor move (Sparse
  MeZO, Liu et al., arXiv 2402.15751). The mask depends on θ, so it is computed once at the
  start of each step (a bool per parameter, alive for that step only) and the replay recomputes
  it from the same θ; nothing of it is transmitted.
- block: one of zo.num_blocks consecutive groups of parameter tensors moves per local step,
  cycling with the step index (block coordinate ZO): effective d = that block's size.

The estimate stays unbiased for the (projected) gradient in every case (sparse and block ones
up to their subspace), so the update rules in zo/optim.py and heron_sfl.py apply unchanged.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from torch import Tensor

from heronsfl.config import ZOConfig
from heronsfl.zo.perturb import Distribution, _directions, accumulate_grad_, perturb_

Perturbation = Literal["dense", "lowrank", "sparse", "sparse-magnitude", "block"]


def as_matrix_shape(p: Tensor) -> tuple[int, int] | None:
    """(m, n) of a weight matrix or conv kernel seen as one; None for vectors and scalars."""
    if p.ndim < 2:
        return None
    return p.shape[0], p.numel() // p.shape[0]


def block_bounds(params: Sequence[Tensor], num_blocks: int) -> list[tuple[int, int]]:
    """[start, end) tensor indices of `num_blocks` consecutive, non-empty, size-balanced blocks."""
    n = len(params)
    b = min(num_blocks, n)
    cum = list(itertools.accumulate(p.numel() for p in params))
    cuts = [0]
    for k in range(1, b):
        i = next(j for j, c in enumerate(cum) if c >= k * cum[-1] / b) + 1
        cuts.append(min(max(i, cuts[-1] + 1), n - (b - k)))  # non-empty, room for the rest
    cuts.append(n)
    return list(zip(cuts[:-1], cuts[1:], strict=True))


class StepDirections:
    """The directions of one local step: u_i for each probe seed of the step.

    Built at the start of the step from the parameters (in their fixed order), the step's index
    (block) and the lazy V seed (lowrank); the magnitude masks are taken from θ here, before any
    probe moves it.
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        kind: Perturbation = "dense",
        distribution: Distribution = "gaussian",
        step: int = 0,
        v_seed: int = 0,
        rank: int = 1,
        density: float = 1.0,
        num_blocks: int = 1,
    ) -> None:
        self.params = list(params)
        self.kind, self.distribution = kind, distribution
        self.rank, self.density, self.v_seed = rank, density, v_seed
        self.active = self.params  # the tensors u is non-zero on
        if kind == "block" and self.params:
            start, end = block_bounds(self.params, num_blocks)[step % min(num_blocks, len(params))]
            self.active = self.params[start:end]
        self.masks: list[Tensor] = []
        if kind == "sparse-magnitude":
            with torch.no_grad():
                self.masks = [_smallest(p, density) for p in self.params]

    @classmethod
    def from_config(
        cls, params: Sequence[Tensor], zo: ZOConfig, step: int, v_seed: int
    ) -> StepDirections:
        """The step's directions as the `[zo]` config section shapes them."""
        return cls(
            params,
            zo.perturbation,
            zo.distribution,
            step,
            v_seed,
            zo.rank,
            zo.density,
            zo.num_blocks,
        )

    def directions(self, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield (param, u_param) for the active parameters, one temporary alive at a time."""
        if self.kind in ("dense", "block"):
            yield from _directions(self.active, seed, self.distribution)
            return
        for p, f in self.factors(seed):
            if isinstance(f, tuple):
                u, v = f
                yield p, (u @ v.T).div_(math.sqrt(self.rank)).view(p.shape)
            else:
                yield p, f

    def factors(self, seed: int) -> Iterator[tuple[Tensor, Tensor | tuple[Tensor, Tensor]]]:
        """Like `directions`, but a low-rank matrix direction as its factors (U, V)."""
        device = self.params[0].device
        g = torch.Generator(device=device).manual_seed(seed)
        gv = torch.Generator(device=device).manual_seed(self.v_seed)
        for i, p in enumerate(self.params):
            mn = as_matrix_shape(p) if self.kind == "lowrank" else None
            if mn is not None:
                u = torch.randn(mn[0], self.rank, generator=g, device=device, dtype=p.dtype)
                v = torch.randn(mn[1], self.rank, generator=gv, device=device, dtype=p.dtype)
                yield p, (u, v)
                continue
            z = torch.randn(p.shape, generator=g, device=device, dtype=p.dtype)
            if self.kind == "sparse":
                keep = torch.rand(p.shape, generator=g, device=device) < self.density
                z.mul_(keep).div_(math.sqrt(self.density))
            elif self.kind == "sparse-magnitude":
                z.mul_(self.masks[i]).div_(math.sqrt(self.density))
            yield p, z

    def v_factors(self, v_seed: int) -> dict[int, Tensor]:
        """V of every matrix parameter (by index) for a given lazy V seed (LOZO-M's projection)."""
        device = self.params[0].device
        gv = torch.Generator(device=device).manual_seed(v_seed)
        out = {}
        for i, p in enumerate(self.params):
            mn = as_matrix_shape(p)
            if mn is not None:
                out[i] = torch.randn(mn[1], self.rank, generator=gv, device=device, dtype=p.dtype)
        return out

    @torch.no_grad()
    def perturb_(self, seed: int, alpha: float) -> None:
        """θ += α u(seed), in place (dense: exactly zo.perturb.perturb_)."""
        if self.kind == "dense":
            perturb_(self.params, seed, alpha, self.distribution)
            return
        for p, u in self.directions(seed):
            p.add_(u, alpha=alpha)

    @torch.no_grad()
    def accumulate_grad_(self, seed: int, coeff: float) -> None:
        """p.grad += coeff * u(seed) (dense: exactly zo.perturb.accumulate_grad_)."""
        if self.kind == "dense":
            accumulate_grad_(self.params, seed, coeff, self.distribution)
            return
        for p, u in self.directions(seed):
            if p.grad is None:
                p.grad = u.mul_(coeff)
            else:
                p.grad.add_(u, alpha=coeff)


def _smallest(p: Tensor, density: float) -> Tensor:
    """Bool mask of the ceil(density * numel) smallest |p| (ties at the threshold included)."""
    k = max(1, math.ceil(density * p.numel()))
    if k >= p.numel():
        return torch.ones_like(p, dtype=torch.bool)
    threshold = p.detach().abs().flatten().kthvalue(k).values
    return p.detach().abs() <= threshold
