"""Update rules for a zeroth-order client beyond Adam and plain in-place ZO-SGD.

The ZO estimate is ĝ = (1/q) Σ g_i u_i. Which rule applies follows `client_optim`:

- name = "sgd", momentum = 0: θ -= lr ĝ, applied in place per probe by regenerating u_i (MeZO's
  ZO-SGD; heron_sfl.py). Nothing of parameter size is stored. lr: the step's variance grows
  like d·lr², so it wants a small lr (digits: 1e-3 learned, 1e-2 degraded; digits.md).
- name = "sgd", momentum = β > 0: ZO-SGD with heavy-ball momentum m = βm + ĝ, θ -= lr m (torch
  SGD fed ĝ through .grad; costs a gradient and a momentum buffer of parameter size). With
  zo.perturbation = "lowrank" the momentum is kept in the low-rank factors instead
  (`LowRankMomentum`, LOZO-M, arXiv 2410.07698): an m x r buffer per weight matrix, almost free.
  lr: the effective step is lr / (1 - β) once the buffer has built up, which takes about
  1/(1 - β) steps, and the buffer restarts every round: with few local steps (digits: h = 9,
  β = 0.9) dividing ZO-SGD's lr did not pay; keep ZO-SGD's own lr (digits, 20 rounds, 3 seeds:
  aux accuracy 0.78 at lr 1e-3, 0.52 at 1e-4, plain ZO-SGD 1e-3 0.75; LOZO-M 0.59 at 1e-3 with
  a seed spread of 0.16, 0.50 at 1e-4).
- name = "signsgd": θ -= lr sign(ĝ), or lr sign(m) with momentum (ZO-SignSGD, Liu et al.,
  "signSGD via Zeroth-Order Oracle", ICLR 2019; Signum's m = βm + (1-β)ĝ with β > 0).
  Every coordinate moves by exactly lr, whatever the noise, so lr is a per-coordinate step
  size like Adam's. It learned slowest of all rules on digits (20 rounds, 3 seeds: aux accuracy
  0.21 at lr 1e-3, chance at 1e-4; docs/results/zo-client.md): the sign of a noise-dominated
  estimate carries little of the gradient; larger lrs were not tried.
- name = "adam": ĝ through .grad into torch Adam. Adam normalises each coordinate by its
  running RMS, so with noise-dominated estimates it too moves about lr per coordinate per step:
  about 10x ZO-SGD's lr (digits: 1e-2; see docs/results/digits.md).

Client optimizer state lives for one round (every engine makes a fresh one), so the seeds
exchange replays these rules exactly from the broadcast state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from heronsfl.zo.directions import StepDirections


class ZOSignSGD(torch.optim.Optimizer):
    """θ -= lr * sign(grad), or lr * sign(m) with m = βm + (1-β) grad (Signum) when β > 0."""

    def __init__(self, params: Iterable[Tensor], lr: float, momentum: float = 0.0) -> None:
        super().__init__(list(params), {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, beta = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if beta > 0:
                    state = self.state[p]
                    if "m" not in state:
                        state["m"] = torch.zeros_like(p)
                    d = state["m"].mul_(beta).add_(d, alpha=1 - beta)
                p.add_(d.sign(), alpha=-lr)


class LowRankMomentum(torch.optim.Optimizer):
    """LOZO-M: ZO-SGD momentum kept in the U-space of the low-rank directions.

    For a weight matrix with lazy V (n x r, fixed for zo.v_every steps), every u_i = U_i Vᵀ/√r,
    so ĝ = (Σ g_i U_i / q) Vᵀ/√r and the momentum can be stored as its m x r factor
    M = βM + Σ g_i U_i / q; the step is θ -= lr M Vᵀ/√r. When V is redrawn, M is carried over by
    least squares onto the new V: M ← M V_oldᵀ V_new (V_newᵀ V_new)⁻¹ (LOZO-M projects the
    same way). Vectors keep a dense buffer (they are small).
    """

    def __init__(self, params: Iterable[Tensor], lr: float, momentum: float) -> None:
        super().__init__(list(params), {"lr": lr, "momentum": momentum})
        self.v_seed: int | None = None  # the V the factors refer to

    @torch.no_grad()
    def zo_step(self, dirs: StepDirections, seeds: Sequence[int], scalars: Sequence[float]) -> None:
        group = self.param_groups[0]
        lr, beta = group["lr"], group["momentum"]
        params = dirs.params
        if self.v_seed is not None and self.v_seed != dirs.v_seed:
            v_old, v_new = dirs.v_factors(self.v_seed), dirs.v_factors(dirs.v_seed)
            for i, vo in v_old.items():
                m, vn = self.state[params[i]].get("m"), v_new[i]
                if m is not None:
                    m.copy_(torch.linalg.solve(vn.T @ vn, (m @ (vo.T @ vn)).T).T)
        for p in params:
            state = self.state[p]
            if "m" in state:
                state["m"].mul_(beta)
        q = len(seeds)
        for seed, g in zip(seeds, scalars, strict=True):
            for p, f in dirs.factors(seed):
                factor = f[0] if isinstance(f, tuple) else f
                state = self.state[p]
                if "m" not in state:
                    state["m"] = torch.zeros_like(factor)
                state["m"].add_(factor, alpha=g / q)
        v = dirs.v_factors(dirs.v_seed)
        for i, p in enumerate(params):
            m = self.state[p]["m"]
            if i in v:
                p.add_((m @ v[i].T).view(p.shape), alpha=-lr / math.sqrt(dirs.rank))
            else:
                p.add_(m, alpha=-lr)
        self.v_seed = dirs.v_seed

    def step(self, closure: None = None) -> None:  # type: ignore[override]
        raise RuntimeError("LowRankMomentum steps from seeds: call zo_step")
