"""count_flops against closed-form MAC counts (FlopCounterMode: multiply-add = 2 FLOPs)."""

from __future__ import annotations

import torch
from torch import nn

from heronsfl.metrics.flops import (
    conv2d_macs,
    count_flops,
    linear_macs,
    macs,
    module_forward_macs,
)


def test_conv2d_flops_match_formula() -> None:
    conv, x = nn.Conv2d(3, 64, 3, padding=1), torch.randn(256, 3, 32, 32)
    flops = count_flops(lambda: conv(x))
    assert flops == 2 * 256 * 64 * 3 * 9 * 32 * 32
    assert macs(flops) == conv2d_macs(3, 64, (3, 3), (32, 32), batch=256)


def test_linear_flops_match_formula() -> None:
    fc, x = nn.Linear(65536, 10), torch.randn(256, 65536)
    flops = count_flops(lambda: fc(x))
    assert flops == 2 * 256 * 65536 * 10
    assert macs(flops) == linear_macs(65536, 10, batch=256)


def test_module_forward_macs_equals_half_the_counted_flops() -> None:
    # Prepare: a stride, a grouped conv and a Linear on a 3-d input cover the formula's terms.
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # (2, 8, 8, 8)
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2),  # (2, 16, 4, 4)
        nn.Flatten(2),  # (2, 16, 16)
        nn.Linear(16, 5),  # (2, 16, 5): 32 rows
    )
    x = torch.randn(2, 3, 8, 8)
    # Execute
    analytic = module_forward_macs(model, x)
    with torch.no_grad():
        counted = count_flops(lambda: model(x))
    # Assert
    expected = (
        2 * 8 * 8 * 8 * 3 * 9  # conv1: outputs * c_in * kh * kw
        + 2 * 16 * 4 * 4 * (8 // 2) * 9  # conv2: c_in / groups
        + 32 * 16 * 5  # linear: rows * in * out
    )
    assert analytic == expected == counted // 2


def test_first_order_step_is_three_forwards_minus_first_input_gradient() -> None:
    # Prepare: the data needs no gradient, so backward skips layer 1's input gradient.
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    x = torch.randn(16, 32)
    forward = 2 * 16 * (32 * 64 + 64 * 10)  # 86_016 FLOPs
    first_input_grad = 2 * 16 * 32 * 64  # 65_536 FLOPs
    # Execute
    with torch.no_grad():
        fwd = count_flops(lambda: model(x))
    step = count_flops(lambda: model(x).sum().backward())
    # Assert
    assert fwd == forward
    assert step == 3 * forward - first_input_grad == 192_512
