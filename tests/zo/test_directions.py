from __future__ import annotations

import pytest
import torch

from heronsfl.zo.directions import StepDirections, block_bounds
from heronsfl.zo.optim import LowRankMomentum


def _params() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    # A conv kernel (seen as 8 x 27), a linear weight and a bias.
    return [
        torch.randn(8, 3, 3, 3, generator=g),
        torch.randn(10, 40, generator=g),
        torch.randn(10, generator=g),
    ]


def _u(dirs: StepDirections, seed: int) -> list[torch.Tensor]:
    """u(seed) as it acts on the parameters: perturb a zero copy by alpha = 1."""
    zeros = [torch.zeros_like(p) for p in dirs.params]
    moved = StepDirections(
        zeros, dirs.kind, dirs.distribution, 0, dirs.v_seed, dirs.rank, dirs.density
    )
    index = {id(p): i for i, p in enumerate(dirs.params)}
    moved.masks, moved.active = dirs.masks, [zeros[index[id(p)]] for p in dirs.active]
    moved.perturb_(seed, 1.0)
    return zeros


def test_lowrank_direction_has_rank_r_per_matrix_and_dense_vectors() -> None:
    dirs = StepDirections(_params(), "lowrank", rank=2, v_seed=7)
    conv, lin, bias = _u(dirs, seed=3)
    assert int(torch.linalg.matrix_rank(conv.view(8, 27))) == 2
    assert int(torch.linalg.matrix_rank(lin)) == 2
    assert bool((bias != 0).all())
    # The same seeds regenerate the same u; another V seed gives another u.
    assert all(torch.equal(a, b) for a, b in zip(_u(dirs, 3), (conv, lin, bias), strict=True))
    other = StepDirections(_params(), "lowrank", rank=2, v_seed=8)
    assert not torch.equal(_u(other, 3)[1], lin)


@pytest.mark.parametrize("kind", ["dense", "lowrank", "sparse", "sparse-magnitude", "block"])
def test_every_direction_has_unit_second_moment(kind: str) -> None:
    """E[u_j²] = 1 on the coordinates a direction may move, so lr means the same for all."""
    params = [torch.zeros(64, 64)]
    if kind == "sparse-magnitude":
        params = [torch.randn(64, 64, generator=torch.Generator().manual_seed(1))]
    sq = torch.zeros(64, 64)
    n = 200
    for seed in range(n):
        dirs = StepDirections(params, kind, v_seed=seed, rank=2, density=0.25)  # type: ignore[arg-type]
        sq += _u(dirs, seed)[0].square()
    assert float(sq.mean() / n) == pytest.approx(1.0, rel=0.1)


def test_sparse_directions_move_the_right_coordinates() -> None:
    p = _params()
    u = _u(StepDirections(p, "sparse", density=0.1), seed=1)
    frac = sum(int((t != 0).sum()) for t in u) / sum(t.numel() for t in p)
    assert 0.05 < frac < 0.15
    # Sparse MeZO: only the 10% smallest |θ| of each tensor move.
    dirs = StepDirections(p, "sparse-magnitude", density=0.1)
    for t, w in zip(_u(dirs, seed=1), p, strict=True):
        moved = t != 0
        assert 0 < int(moved.sum()) <= -(-t.numel() // 10)
        assert float(w.abs()[moved].max()) <= float(w.abs()[~moved].min())


def test_block_directions_cycle_through_balanced_non_empty_blocks() -> None:
    p = [torch.zeros(n) for n in (5, 1000, 3, 3, 400, 600)]
    bounds = block_bounds(p, 3)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(p) and len(bounds) == 3
    assert all(end > start for start, end in bounds)
    assert block_bounds(p, 10) == [(i, i + 1) for i in range(6)]  # at most one block per tensor
    for step in range(6):
        dirs = StepDirections(p, "block", step=step, num_blocks=3)
        u = _u(dirs, seed=step)
        start, end = bounds[step % 3]
        assert all(bool((t != 0).all()) == (start <= i < end) for i, t in enumerate(u))


def test_lowrank_momentum_lives_in_the_factors() -> None:
    """LOZO-M: an m x r buffer per matrix; with one V it equals dense heavy-ball momentum."""
    p = _params()
    dense = [t.clone() for t in p]
    opt = LowRankMomentum(p, lr=0.1, momentum=0.9)
    buf = [torch.zeros_like(t) for t in dense]
    for step in range(3):
        dirs = StepDirections(p, "lowrank", step=step, v_seed=5, rank=2)
        opt.zo_step(dirs, [10 + step, 20 + step], [0.5, -1.0])
        for i, (seed, g) in enumerate(((10 + step, 0.5), (20 + step, -1.0))):
            for j, u in enumerate(_u(StepDirections(dense, "lowrank", v_seed=5, rank=2), seed)):
                if i == 0:
                    buf[j].mul_(0.9)
                buf[j].add_(u, alpha=g / 2)
        for t, b in zip(dense, buf, strict=True):
            t.add_(b, alpha=-0.1)
    assert [tuple(opt.state[t]["m"].shape) for t in p] == [(8, 2), (10, 2), (10,)]
    for a, b in zip(p, dense, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # A new V carries the momentum over by projection (and stays factor-sized).
    opt.zo_step(StepDirections(p, "lowrank", v_seed=6, rank=2), [1], [0.1])
    assert opt.v_seed == 6 and tuple(opt.state[p[1]]["m"].shape) == (10, 2)
