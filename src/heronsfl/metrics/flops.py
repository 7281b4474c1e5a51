"""FLOPs of one client step: measured with FlopCounterMode, cross-checked by closed form.

Units: ``FlopCounterMode`` counts a multiply-add as 2 FLOPs. The HERON-SFL paper reports MACs,
so ``macs(flops) = flops / 2``. Only matmul-like ops are counted (mm, addmm, bmm, convolution,
attention); elementwise work (bias add, BatchNorm, ReLU, loss, the optimizer update) is O(tensor
size), small next to the convolutions, and left out by the paper's MAC counts as well.

Step cost in units of F, one forward pass of the client model:
    - zeroth-order with q probes: q + 1 forwards with a one-sided estimate (the paper's Eq. 2),
      2q forwards with a central one (MeZO); no backward at all.
    - first-order: about 3F. Backward through a conv or linear layer costs 2F: one product for
      the weight gradient and one for the input gradient. The first layer's input (the data)
      needs no gradient, so for a chain of such layers it is exactly 3F - F_first.

Analytic MACs, the standard count used by fvcore (``conv_flop_count`` in
``fvcore/nn/jit_handles.py``, one MAC per "flop") and by PyTorch's own counter
(``conv_flop_count`` in ``torch/utils/flop_counter.py``, times 2): a Conv2d costs
``output elements * (c_in / groups) * kh * kw``; a Linear costs ``batch * in * out``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

# PyTorch counts the CUDA attention kernels but not the CPU one that SDPA dispatches to; register
# the formulas it already has for them (language-model clients on CPU).
_aten = torch.ops.aten
for _op, _formula in [
    (_aten._scaled_dot_product_flash_attention_for_cpu, flop_counter.sdpa_flop),
    (_aten._scaled_dot_product_flash_attention_for_cpu_backward, flop_counter.sdpa_backward_flop),
]:
    if _op not in flop_counter.flop_registry:
        flop_counter.register_flop_formula(_op, get_raw=True)(_formula)  # already shape-wrapped

__all__ = ["FlopCounterMode", "count_flops", "macs"]


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (multiply-add = 2) of every matmul-like aten op ``fn`` runs, backward included."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def macs(flops: int) -> float:
    """Multiply-accumulates, the paper's unit: half of ``count_flops``."""
    return flops / 2


def conv2d_macs(
    c_in: int,
    c_out: int,
    kernel_hw: tuple[int, int],
    out_hw: tuple[int, int],
    batch: int,
    groups: int = 1,
) -> int:
    """Forward MACs of a Conv2d: each output element is a length c_in/groups*kh*kw dot product."""
    (kh, kw), (oh, ow) = kernel_hw, out_hw
    return batch * c_out * oh * ow * (c_in // groups) * kh * kw


def linear_macs(in_features: int, out_features: int, batch: int) -> int:
    """Forward MACs of a Linear on ``batch`` rows (all leading dims flattened)."""
    return batch * in_features * out_features


def module_forward_macs(module: nn.Module, example_input: Tensor) -> int:
    """Analytic forward MACs of every Conv2d and Linear in ``module``, read off forward hooks.

    Runs one forward under ``torch.no_grad`` to learn the output shapes. Other layers are
    ignored, matching what ``FlopCounterMode`` counts.
    """
    total = 0

    def hook(layer: nn.Module, _inputs: object, output: Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            # (N, C_out, H, W), or (C_out, H, W) for an unbatched input
            batch = output.shape[0] if output.dim() == 4 else 1
            kh, kw = layer.kernel_size
            oh, ow = output.shape[-2:]
            total += conv2d_macs(
                layer.in_channels, layer.out_channels, (kh, kw), (oh, ow), batch, layer.groups
            )
        elif isinstance(layer, nn.Linear):
            # (*, out_features): every leading dim is a row of the matmul
            total += linear_macs(
                layer.in_features, layer.out_features, output.numel() // layer.out_features
            )

    handles = [
        m.register_forward_hook(hook)
        for m in module.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    try:
        with torch.no_grad():
            module(example_input)
    finally:
        for h in handles:
            h.remove()
    return total
