"""Communication accounting: bytes actually sent, by direction and kind.

Payload tensors are already at wire precision when they are built (see messages.py), so the
bytes of a message are simply sum(numel * element_size) of its tensors.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Literal

from torch import Tensor

Direction = Literal["up", "down"]


def payload_nbytes(tensors: Iterable[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class CommCounter:
    """Cumulative bytes per (direction, kind); kinds: activations, labels, gradients, model."""

    def __init__(self) -> None:
        self.bytes: dict[tuple[Direction, str], int] = defaultdict(int)

    def add(self, direction: Direction, kind: str, tensors: Iterable[Tensor]) -> int:
        n = payload_nbytes(tensors)
        self.bytes[(direction, kind)] += n
        return n

    def total(self, direction: Direction) -> int:
        return sum(v for (d, _), v in self.bytes.items() if d == direction)

    def as_metrics(self) -> dict[str, int]:
        """`comm/uplink_bytes`, `comm/downlink_bytes` and one cumulative key per kind."""
        out = {"comm/uplink_bytes": self.total("up"), "comm/downlink_bytes": self.total("down")}
        for (d, kind), v in sorted(self.bytes.items()):
            out[f"comm/{d}_{kind}_bytes"] = v
        return out

    def state_dict(self) -> dict[str, int]:
        return {f"{d}:{k}": v for (d, k), v in self.bytes.items()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.bytes.clear()
        for key, value in state.items():
            direction, kind = key.split(":", 1)
            assert direction in ("up", "down"), f"bad comm counter key {key!r}"
            self.bytes[(direction, kind)] = int(value)  # type: ignore[index]
