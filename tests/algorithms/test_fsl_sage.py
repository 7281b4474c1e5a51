from __future__ import annotations

import logging
import re

import pytest
import torch

from heronsfl.algorithms.base import task_loss
from heronsfl.algorithms.fsl_sage import FSLSAGE
from heronsfl.tasks import build_split_model
from tests.conftest import tiny_config


def _gradients(module: torch.nn.Module, acts: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    a = acts.clone().requires_grad_(True)
    return torch.autograd.grad(task_loss(module(a), labels, reduction="sum"), a)[0]


def test_alignment_makes_the_aux_gradient_match_the_servers() -> None:
    # Prepare
    cfg = tiny_config("algorithm=fsl-sage", "fsl_sage.align_epochs=20", "fsl_sage.align_lr=1e-2")
    model = build_split_model(cfg)
    assert model.aux is not None
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(64, *model.cut_shape, generator=g)
    labels = torch.randint(0, 10, (64,), generator=g)
    model.server.eval()  # fixed BatchNorm statistics: the target is a fixed function of acts
    target = _gradients(model.server, acts, labels)
    before = (_gradients(model.aux, acts, labels) - target).square().mean()
    # Execute
    FSLSAGE(cfg)._align(model.server, model.aux, acts, labels)
    # Assert
    model.aux.eval()
    after = (_gradients(model.aux, acts, labels) - target).square().mean()
    assert after < 0.5 * before, (float(before), float(after))


def test_aux_heads_stay_per_client_and_alignment_downloads_are_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from heronsfl.engines.simulation import Simulation

    sim = Simulation(tiny_config("algorithm=fsl-sage", "rounds=2", "fsl_sage.align_every=2"))
    with caplog.at_level(logging.INFO, logger="heronsfl"):
        records = sim.run()
    # The alignment (minutes at the reference setup) announces itself and reports each fit.
    lines = [r.getMessage() for r in caplog.records if "align" in r.getMessage()]
    assert lines[0] == "round 2: aligning 3 clients' aux heads to the server's cut gradients"
    fits = [
        re.fullmatch(r"round 2: aligned client (\d)'s .* mismatch \S+ -> \S+, .* s", m)
        for m in lines[1:]
    ]
    assert [m.group(1) if m else m for m in fits] == ["0", "1", "2"], lines
    assert "aux" not in sim.averaged()  # the Fed-Server averages the client sub-model only
    aux_bytes = sum(
        t.numel() * 4 for t in sim.model.aux.state_dict().values() if t.is_floating_point()
    ) + sum(t.numel() * 8 for t in sim.model.aux.state_dict().values() if not t.is_floating_point())
    assert "comm/down_aux_bytes" not in records[0]
    assert records[1]["comm/down_aux_bytes"] == 3 * aux_bytes  # fp32 wire, 3 clients
    stored = sim.server.extra["aux"]
    assert sorted(stored) == [0, 1, 2]
    assert any(not torch.equal(stored[0][k], stored[1][k]) for k in stored[0])


def test_align_batch_size_sets_the_steps_per_pass() -> None:
    # Prepare: 64 buffered samples, 3 passes; the reference code fits its whole buffer per step.
    from torch.optim.optimizer import register_optimizer_step_post_hook

    g = torch.Generator().manual_seed(0)
    steps = []
    handle = register_optimizer_step_post_hook(lambda *_: steps.append(1))
    try:
        for align_batch, expected in (("0", 3 * 4), ("64", 3)):  # 0 = train.batch_size (16)
            cfg = tiny_config(
                "algorithm=fsl-sage",
                "train.batch_size=16",
                "fsl_sage.align_epochs=3",
                f"fsl_sage.align_batch_size={align_batch}",
            )
            model = build_split_model(cfg)
            acts = torch.randn(64, *model.cut_shape, generator=g)
            labels = torch.randint(0, 10, (64,), generator=g)
            steps.clear()
            # Execute
            FSLSAGE(cfg)._align(model.server, model.aux, acts, labels)
            # Assert
            assert len(steps) == expected, (align_batch, len(steps))
    finally:
        handle.remove()
