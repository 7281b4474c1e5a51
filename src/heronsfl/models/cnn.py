"""A small CNN for 8x8 digits: the embedded demo workload (runs in seconds on 2 CPU cores)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn


def digits_cnn_stages(num_classes: int = 10, width: int = 16) -> OrderedDict[str, nn.Module]:
    """block1 (conv, 1x8x8 -> Wx8x8) | block2 (conv + pool -> 2Wx4x4) | head (linear)."""
    return OrderedDict(
        block1=nn.Sequential(
            nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        ),
        block2=nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ),
        head=nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 4 * 4, num_classes)),
    )


DIGITS_CUTS = ("block1", "block2")
