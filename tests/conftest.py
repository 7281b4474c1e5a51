"""Shared fixtures: tiny, fast configurations on the bundled digits data."""

from __future__ import annotations

import pytest

from heronsfl.config import RunConfig
from heronsfl.registry import with_overrides

TINY = [
    "task=cnn-digits",
    "clients=3",
    "rounds=2",
    "train.batch_size=16",
    "train.local_steps=6",
    "train.upload_every=2",
    "train.eval_batch_size=512",
    "model.width=4",
    "comm.wire_dtype=fp32",
    "device=cpu",
]


def tiny_config(*overrides: str) -> RunConfig:
    return with_overrides(RunConfig(), [*TINY, *overrides])


@pytest.fixture
def tiny() -> RunConfig:
    return tiny_config()
