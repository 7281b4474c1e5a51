"""Fed-Server math: weighted averaging of client states, streamed so N clients never coexist."""

from __future__ import annotations

import torch
from torch import Tensor


class WeightedAverage:
    """Running sum of w_i * state_i; `result()` divides by sum w_i (FedAvg, paper Eq. 8).

    Sums are kept in fp32 (float64 for integer buffers such as BatchNorm's num_batches_tracked,
    rounded back at the end), so the fp16 states that arrive over the wire average without
    fp16 round-off accumulating across clients.
    """

    def __init__(self) -> None:
        self._sum: dict[str, Tensor] = {}
        self._dtype: dict[str, torch.dtype] = {}
        self._total = 0.0

    def add(self, state: dict[str, Tensor], weight: float) -> None:
        if weight <= 0:
            raise ValueError(f"aggregation weight must be > 0, got {weight}")
        for key, value in state.items():
            acc_dtype = torch.float32 if value.is_floating_point() else torch.float64
            contrib = value.detach().to(acc_dtype) * weight
            if key in self._sum:
                self._sum[key] += contrib
            else:
                self._sum[key] = contrib
                self._dtype[key] = value.dtype
        self._total += weight

    def result(self, like: dict[str, Tensor]) -> dict[str, Tensor]:
        """The average, cast back to the dtypes of `like` (the global model's own state).

        Keys of `like` that no client sent (frozen parameters) keep their value bit for bit.
        """
        if self._total == 0:
            raise ValueError("no client state to aggregate: at least one client must report")
        out: dict[str, Tensor] = {}
        for key, ref in like.items():
            if key not in self._sum:
                out[key] = ref
                continue
            avg = self._sum[key] / self._total

            out[key] = (avg if ref.is_floating_point() else avg.round()).to(ref.dtype)
        return out


def to_wire(state: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """A copy of `state` as sent: floating tensors at wire precision, integer buffers unchanged."""
    return {
        k: (v.detach().to(dtype, copy=True) if v.is_floating_point() else v.detach().clone())
        for k, v in state.items()
    }
