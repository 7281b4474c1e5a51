"""What crosses the network between roles: plain dataclasses of tensors, no behaviour.

Every payload is already at wire precision when it is built, so counting its bytes counts what
is actually sent (see metrics/comm.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from heronsfl.metrics.comm import CommCounter


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


@dataclass(frozen=True)
class StepCost:
    """What one client local step cost the client (measured by engines/step.py)."""

    peak_mem_bytes: int  # live tensors: params, grads, optimizer state, batch, temporaries
    flops: int  # FlopCounterMode count (a multiply-add is 2 FLOPs; MACs = flops / 2)
    uplink_bytes: int
    downlink_bytes: int


@dataclass
class ClientResult:
    """Client -> Fed-Server, once per round: everything a client's round leaves behind.

    Built at the end of a client's round (engines/client.py, from the algorithm's
    `client_payload`); the simulator hands it to the Fed-Server as it is, the Flower engine
    encodes it into one reply (engines/flower/codec.py) and decodes the same type.
    """

    client_id: int
    num_samples: int
    state: dict[str, Tensor]  # travelling client (+ aux) state, wire precision (may be empty)
    # Algorithm-defined tensors sent instead of (part of) the state, e.g. the seeds exchange's
    # {"seeds": (h,) int64, "scalars": (h, q) float32}; sent as they are, never cast.
    exchange: dict[str, Tensor]
    losses: list[float]
    comm: CommCounter  # the client's own count of what it received and sent, by kind
    step_cost: StepCost | None = None
    # A decoupled client's activation uploads, for an engine that batches them into the reply
    # (the codec can carry them); the simulator and the Flower engine consume them during the
    # round (Flower: on the per-step stream) and leave this empty.
    uploads: list[Upload] = field(default_factory=list)
    # A networked synchronous client's wait for each server answer (send to answer, seconds).
    round_trips_s: list[float] = field(default_factory=list)
    # A networked client's process peak resident memory over its round, in bytes (0 where the
    # client shares the process with the server, as in the simulator).
    peak_rss_bytes: int = 0
