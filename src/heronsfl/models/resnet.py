"""CIFAR-style ResNet-18 (He et al. 2016): 3x3 stem, stride 1, no max-pool; 11.17M parameters.

Written as a list of named stages (`stem`, `layer1.0` ... `layer4.1`, `head`) so the cut can be
placed after the stem or after any BasicBlock. No torchvision.
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and a (projected when shape changes) identity shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        # One op per statement, in-place ReLU and residual add (as torchvision does): a no-grad
        # forward then holds at most three activations (block input, op input, op output).
        out = self.conv1(x)
        out = self.bn1(out)
        out = F.relu(out, inplace=True)
        out = self.conv2(out)
        out = self.bn2(out)
        out += self.shortcut(x)
        return F.relu(out, inplace=True)


def resnet18_stages(
    num_classes: int = 10, width: int = 64, in_channels: int = 3, stem: str = "cifar"
) -> OrderedDict[str, nn.Module]:
    """Named stages of ResNet-18; stage names are the allowed cut points (all but the head).

    stem "cifar": 3x3 conv, stride 1, no max-pool (32x32 stays 32x32). stem "imagenet": 7x7
    conv stride 2 + 3x3 max-pool stride 2 (32x32 becomes 8x8), torchvision's layout.
    """
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    if stem == "imagenet":
        stages["stem"] = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
    else:
        stages["stem"] = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )

    c_in = width
    for i, (mult, stride) in enumerate([(1, 1), (2, 2), (4, 2), (8, 2)], start=1):
        c_out = width * mult
        stages[f"layer{i}.0"] = BasicBlock(c_in, c_out, stride)
        stages[f"layer{i}.1"] = BasicBlock(c_out, c_out, 1)
        c_in = c_out
    stages["head"] = nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)
    )
    return stages


RESNET18_CUTS = ("stem",) + tuple(f"layer{i}.{j}" for i in range(1, 5) for j in range(2))
