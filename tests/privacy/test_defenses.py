"""Defenses change what is uploaded, are counted in the bytes, and are off by default."""

from __future__ import annotations

import pytest
import torch

from heronsfl.config import describe_fields
from heronsfl.engines.simulation import Simulation
from heronsfl.errors import ConfigError
from heronsfl.privacy.defenses import clip_and_noise, distance_correlation
from heronsfl.registry import load_config
from tests.conftest import TINY, tiny_config


def _uploads(*overrides: str) -> tuple[list[torch.Tensor], int]:
    """Client 0's round-1 uploads and the activation bytes its counter recorded."""
    sim = Simulation(tiny_config(*overrides))
    run = sim.client_run(0, sim.begin_round(), measure=False)
    ups = [up.activations for up in run if up is not None]
    return ups, run.comm.bytes[("up", "activations")]


@pytest.mark.parametrize("algorithm", ["heron-sfl", "cse-fsl", "sflv2"])
def test_noise_and_clip_change_the_upload_and_are_counted(algorithm: str) -> None:
    # Prepare
    clean, clean_bytes = _uploads(f"algorithm={algorithm}")
    noisy, noisy_bytes = _uploads(
        f"algorithm={algorithm}", "privacy.noise_std=0.5", "privacy.clip_norm=2.0"
    )
    clipped, _ = _uploads(f"algorithm={algorithm}", "privacy.clip_norm=2.0")
    # Assert: the same shapes and bytes (fp32 wire in TINY), other values
    assert len(noisy) == len(clean) > 0
    assert noisy_bytes == clean_bytes == sum(a.numel() * 4 for a in noisy)
    first = noisy[0]
    assert first.shape == clean[0].shape and not torch.equal(first, clean[0])
    # The first step's forward is the same in both runs: the difference is the clipped
    # activations plus N(0, 0.5^2) noise.
    diff = first - clipped[0]
    assert 0.45 < diff.std().item() < 0.55 and abs(diff.mean().item()) < 0.05
    assert clipped[0].flatten(1).norm(dim=1).max().item() <= 2.0 + 1e-4


def test_noise_is_seeded_per_client_and_step() -> None:
    a, _ = _uploads("privacy.noise_std=0.1")
    b, _ = _uploads("privacy.noise_std=0.1")
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    g = torch.Generator().manual_seed(0)
    z = torch.ones(3, 4)
    assert torch.equal(clip_and_noise(z, 0.0, 0.0, g), z)  # off: the values pass unchanged


def test_distance_correlation() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, generator=g)
    assert distance_correlation(x, x).item() == pytest.approx(1.0, abs=1e-4)
    assert distance_correlation(x, 3 * x + 1).item() == pytest.approx(1.0, abs=1e-4)
    # Independent samples: small (the sample estimate is biased up, about 0.19 here); a
    # non-linear dependence that correlation misses (x^2 of a centred x) is seen.
    independent = distance_correlation(x, torch.randn(256, 3, generator=g)).item()
    squared = distance_correlation(x, x**2).item()
    assert independent < 0.3 < squared < 0.9
    z = torch.randn(256, 3, generator=g, requires_grad=True)
    distance_correlation(x, z).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("algorithm", ["heron-sfl", "cse-fsl", "sflv2"])
def test_nopeek_changes_the_client_update(algorithm: str) -> None:
    # Prepare
    def client_after_round(*overrides: str) -> torch.Tensor:
        steps = ["train.local_steps=2", "train.upload_every=1"]
        sim = Simulation(tiny_config(f"algorithm={algorithm}", "rounds=1", *steps, *overrides))
        sim.run_round()
        return torch.cat([v.flatten() for k, v in sim.global_state.items() if "weight" in k])

    # Execute / Assert: same seed, the penalty alone changes where the client ends
    assert not torch.equal(client_after_round(), client_after_round("privacy.nopeek_weight=1"))


def test_privacy_keys_are_listed() -> None:
    keys = {k for k, _, _ in describe_fields()}
    assert {"privacy.noise_std", "privacy.clip_norm", "privacy.nopeek_weight"} <= keys


def test_privacy_config_rules() -> None:
    with pytest.raises(ConfigError, match="uploads none"):
        load_config(None, [*TINY, "algorithm=fedavg", "privacy.noise_std=0.1"])
    with pytest.raises(ConfigError, match="freeze_client"):
        load_config(None, [*TINY, "model.freeze_client=true", "privacy.nopeek_weight=1"])
    with pytest.raises(ConfigError, match="not implemented for 'fsl-sage'"):
        load_config(None, [*TINY, "algorithm=fsl-sage", "privacy.nopeek_weight=1"])
    with pytest.raises(ConfigError, match="privacy.noise_std = -1.0 must be >= 0"):
        load_config(None, [*TINY, "privacy.noise_std=-1"])
