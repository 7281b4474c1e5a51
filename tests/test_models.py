"""model.init: the conv initialisation the public FSL-SAGE code uses, and the default kept."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from heronsfl.config import RunConfig
from heronsfl.errors import ConfigError
from heronsfl.registry import with_overrides
from heronsfl.tasks import build_split_model

RESNET = [
    "task=resnet18-cifar10",
    "model.stem=imagenet",
    "model.cut=layer2.1",
    "model.aux=resblock",
    "model.width=16",  # wide enough for std checks on >= 10k draws, small enough to be quick
    "device=cpu",
]


def _config(*overrides: str) -> RunConfig:
    return with_overrides(RunConfig(), [*RESNET, *overrides])


def _convs(*modules: nn.Module | None) -> list[nn.Conv2d]:
    return [
        m for mod in modules if mod is not None for m in mod.modules() if isinstance(m, nn.Conv2d)
    ]


@torch.no_grad()
def test_kaiming_init_draws_fan_out_normal_on_client_server_and_aux() -> None:
    split = build_split_model(_config("model.init=kaiming"))
    convs = _convs(split.client, split.server, split.aux)
    assert len(convs) == 10 + 10 + 5  # stem + layer1-2 / layer3-4 / the aux's two blocks
    checked = 0
    for conv in convs:
        if conv.weight.numel() < 10_000:  # too few draws for a tight std check
            continue
        checked += 1
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        std = float(conv.weight.std())
        assert std == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.05), conv
        assert abs(float(conv.weight.mean())) < 0.1 * std  # normal around 0, not uniform >= 0
    assert checked >= 8
    for bn in (m for m in split.server.modules() if isinstance(m, nn.BatchNorm2d)):
        assert bool((bn.weight == 1).all()) and bool((bn.bias == 0).all())


@torch.no_grad()
def test_default_init_is_pytorchs_and_kaiming_is_seeded() -> None:
    default = build_split_model(_config())
    conv = default.server.layer3_1.conv1  # 256 -> 256, 3x3: PyTorch's bound 1/sqrt(fan_in)
    fan_in = conv.in_channels * 9
    assert float(conv.weight.abs().max()) <= 1 / math.sqrt(fan_in)
    assert float(conv.weight.std()) == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.05)

    a = build_split_model(_config("model.init=kaiming"))
    b = build_split_model(_config("model.init=kaiming"))
    c = build_split_model(_config("model.init=kaiming", "seed=1"))
    wa, wb, wc = (m.client.layer2_1.conv2.weight for m in (a, b, c))
    assert torch.equal(wa, wb)  # the same seed gives the same weights
    assert not torch.equal(wa, wc)


def test_kaiming_init_on_a_language_model_task_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"model\.init = 'kaiming'.*use model\.init=default"):
        with_overrides(RunConfig(), ["task=gpt2s-e2e", "model.init=kaiming"])
