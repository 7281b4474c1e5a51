"""SplitModel: the client sub-model (front), the main server's sub-model (back) and the aux head.

A network is given as ordered named stages; `split_stages` cuts it after the stage named `cut`.
The tensor crossing the cut is the `activations` (the papers' "smashed data").
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class SplitModel:
    """The three trainable parts of split learning, plus the shape of one sample at the cut."""

    client: nn.Module
    server: nn.Module
    aux: nn.Module | None
    cut: str
    cut_shape: tuple[int, ...]  # one sample's activations, e.g. (64, 32, 32) after "layer1.0"

    def to(self, device: torch.device) -> SplitModel:
        self.client.to(device)
        self.server.to(device)
        if self.aux is not None:
            self.aux.to(device)
        return self


def _sequential(stages: list[tuple[str, nn.Module]]) -> nn.Sequential:
    # nn.Module names may not contain dots: "layer1.0" is stored as "layer1_0".
    return nn.Sequential(OrderedDict((name.replace(".", "_"), m) for name, m in stages))


def split_stages(
    stages: OrderedDict[str, nn.Module], cut: str, input_shape: tuple[int, ...]
) -> tuple[nn.Sequential, nn.Sequential, tuple[int, ...]]:
    """Client = stages up to and including `cut`; server = the rest. Returns the cut shape too.

    Cutting after the last stage gives the client the whole network and the server nothing (an
    empty Sequential, the identity): plain federated learning.
    """
    names = list(stages)
    if cut not in names:
        raise ValueError(f"cut {cut!r} is not a cut point; choose one of: {', '.join(names[:-1])}")
    i = names.index(cut) + 1
    items = list(stages.items())
    client, server = _sequential(items[:i]), _sequential(items[i:])
    with torch.no_grad():
        was_training = client.training
        client.eval()  # a shape probe must not touch BatchNorm running statistics
        shape = tuple(client(torch.zeros(1, *input_shape)).shape[1:])
        client.train(was_training)
    return client, server, shape


def build_aux_head(kind: str, cut_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The client's auxiliary classifier after the cut.

    linear: Flatten + Linear(prod(cut_shape), classes), the paper's head (65536 -> 10 on ResNet-18).
    conv:   3x3 stride-2 conv + BN + ReLU + global pool + Linear: few parameters for large cuts.
    """
    if kind == "linear":
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(cut_shape), num_classes))
    if kind == "resblock":
        from heronsfl.models.resnet import BasicBlock

        c = cut_shape[0]
        return nn.Sequential(
            BasicBlock(c, 2 * c, 2),
            BasicBlock(2 * c, 2 * c, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * c, num_classes),
        )
    if kind == "conv":
        c = cut_shape[0]
        return nn.Sequential(
            nn.Conv2d(c, c, 3, 2, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(c, num_classes),
        )
    raise ValueError(f"unknown aux head {kind!r}; choose 'linear' or 'conv'")


def kaiming_init(*modules: nn.Module | None) -> None:
    """torchvision's ResNet initialisation, in place: every conv weight drawn from
    kaiming_normal_(mode="fan_out", nonlinearity="relu"), every BatchNorm weight 1 and bias 0.

    The public FSL-SAGE code initialises its client, server and aux head this way; PyTorch's
    default conv init (kaiming-uniform with a = sqrt(5)) draws weights about 2.4x smaller for a
    3x3 conv with as many inputs as outputs. Under BatchNorm the forward is scale-invariant, but
    an Adam step moves every weight by about lr, so the scale decides how far a client drifts
    from the round's start in relative terms. Modules are visited in the order given.
    """
    for module in modules:
        if module is None:
            continue
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def count_params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())
