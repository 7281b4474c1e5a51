"""What crosses the network between roles: plain dataclasses of tensors, no behaviour.

Every payload is already at wire precision when it is built, so counting its bytes counts what
is actually sent (see metrics/comm.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass(frozen=True)
class Batch:
    """A client's mini-batch: inputs (B, C, H, W) float, labels (B,) int64."""

    x: Tensor
    y: Tensor


@dataclass(frozen=True)
class Upload:
    """Client -> main server: activations at the cut (B, *cut_shape) and their labels (B,)."""

    client_id: int
    activations: Tensor
    labels: Tensor


@dataclass(frozen=True)
class Download:
    """Main server -> client (synchronous SFL only): dLoss/d activations, (B, *cut_shape)."""

    client_id: int
    gradient: Tensor


@dataclass
class ClientResult:
    """What one client hands the Fed-Server at the end of a round."""

    client_id: int
    num_samples: int
    state: dict[str, Tensor]  # client (+ aux) parameters and buffers, at wire precision
    uploads: list[Upload] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
