from __future__ import annotations

import math

import pytest
import torch

from heronsfl.zo.perturb import accumulate_grad_, frozen_batchnorm_stats, perturb_


def _params(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(50, 20, generator=g) * 0.05, torch.randn(20, generator=g)]


@pytest.mark.parametrize("distribution", ["gaussian", "sphere"])
def test_restore_is_within_one_ulp_and_deterministic(distribution: str) -> None:
    # Prepare
    params = _params()
    original = [p.clone() for p in params]
    # Execute
    perturb_(params, seed=123, alpha=1e-3, distribution=distribution)
    moved = [p.clone() for p in params]
    perturb_(params, seed=123, alpha=-1e-3, distribution=distribution)
    # Assert: the perturbation really moved θ, and restoring brought it back to within one ulp
    # (fl(fl(θ+c)-c) is not always θ bit for bit; see zo/perturb.py).
    assert any(not torch.equal(m, o) for m, o in zip(moved, original, strict=True))
    # The rounding happens at the perturbed value's magnitude, so the bound is one ulp of the
    # larger of |θ| and |θ + μu|.
    eps = torch.finfo(torch.float32).eps
    for p, o, m in zip(params, original, moved, strict=True):
        assert torch.all((p - o).abs() <= eps * torch.maximum(o.abs(), m.abs()))
    # The same seed regenerates the same direction: repeating gives bit-identical results.
    again = [o.clone() for o in original]
    perturb_(again, seed=123, alpha=1e-3, distribution=distribution)
    perturb_(again, seed=123, alpha=-1e-3, distribution=distribution)
    assert all(torch.equal(a, p) for a, p in zip(again, params, strict=True))


def test_sphere_direction_has_norm_sqrt_d() -> None:
    params = [torch.zeros(30, 7), torch.zeros(11)]
    perturb_(params, seed=5, alpha=1.0, distribution="sphere")
    d = sum(p.numel() for p in params)
    norm = math.sqrt(sum(float(p.square().sum()) for p in params))
    assert norm == pytest.approx(math.sqrt(d), rel=1e-5)


@pytest.mark.parametrize("distribution", ["gaussian", "sphere"])
def test_estimator_mean_approaches_true_gradient_of_quadratic(distribution: str) -> None:
    """f(θ) = ½ θᵀAθ; the one-sided estimate (f(θ+μu)-f(θ))/μ · u averages to Aθ + O(μ).

    With N = 4000 probes in d = 20 dimensions the relative error of the mean is about
    sqrt(d / N) ≈ 0.07; we assert < 0.15 (and > 0 correlation 0.99 would be too strict).
    """
    # Prepare
    d, n, mu = 20, 4000, 1e-4
    g = torch.Generator().manual_seed(0)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    a = a @ a.T / d + torch.eye(d, dtype=torch.float64)
    theta = torch.randn(d, generator=g, dtype=torch.float64)
    true_grad = a @ theta

    def f(x: torch.Tensor) -> float:
        return float(0.5 * x @ a @ x)

    # Execute: the estimate of each probe is accumulated into .grad exactly as HERON-SFL does.
    p = theta.clone()
    for seed in range(n):
        f0 = f(p)
        perturb_([p], seed, mu, distribution)
        f1 = f(p)
        perturb_([p], seed, -mu, distribution)
        accumulate_grad_([p], seed, (f1 - f0) / mu / n, distribution)
    # Assert
    assert p.grad is not None
    rel = float((p.grad - true_grad).norm() / true_grad.norm())
    assert rel < 0.15, rel


def test_frozen_batchnorm_stats_uses_batch_stats_without_updating_running_ones() -> None:
    bn = torch.nn.BatchNorm1d(4).train()
    x = torch.randn(32, 4) * 3 + 1
    with frozen_batchnorm_stats(bn):
        y = bn(x)
    assert torch.equal(bn.running_mean, torch.zeros(4))
    assert int(bn.num_batches_tracked) == 0
    assert torch.allclose(y.mean(0), torch.zeros(4), atol=1e-5)  # batch statistics were used
    bn(x)
    assert not torch.equal(bn.running_mean, torch.zeros(4))  # and are updated again after
