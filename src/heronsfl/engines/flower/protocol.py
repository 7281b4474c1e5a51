"""What the Flower engine exchanges and how it is set up, as plain dataclasses (no Flower types).

One round is one request/reply per participating client: the server sends a `RoundRequest`
(the global client + aux state at wire precision and the round's indices); the client runs its
h local steps and answers with its `messages.ClientResult` (its state or exchange, its activation
uploads, its losses, its byte counts).
`engines/flower/codec.py` maps these to and from Flower records; nothing else sees Flower keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from torch import Tensor

from heronsfl.errors import ConfigError, UserError


class DeployError(UserError):
    """The deployment cannot go on (too few clients connected or replying); the message says why."""


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DeployOptions:
    """How the server runs on Flower; travels in Flower's run config under `deploy.`."""

    out: str = _f("", "run directory on the server machine (metrics, checkpoint); absolute path")
    round_timeout_s: float = _f(
        600.0, "how long the server waits for a round's replies before going on without a client"
    )
    min_clients: int = _f(
        1, "fewest replies a round needs; with fewer the run stops (restart resumes from there)"
    )
    connect_timeout_s: float = _f(
        120.0, "how long the server waits for `clients` SuperNodes to connect before each round"
    )
    overwrite: bool = _f(False, "start afresh even when `out` holds a checkpoint or a finished run")

    def __post_init__(self) -> None:
        problems = []
        if not self.out:
            problems.append("deploy.out is empty: give the run directory (an absolute path)")
        if not self.round_timeout_s > 0:
            problems.append(f"deploy.round_timeout_s = {self.round_timeout_s} must be > 0")
        if not self.connect_timeout_s > 0:
            problems.append(f"deploy.connect_timeout_s = {self.connect_timeout_s} must be > 0")
        if self.min_clients < 1:
            problems.append(f"deploy.min_clients = {self.min_clients} must be >= 1")
        if problems:
            raise ConfigError(problems)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass(frozen=True)
class NodeSettings:
    """What one SuperNode knows about itself (Flower's node config)."""

    partition_id: int  # = the client id: which partition of the training set this node holds
    num_partitions: int | None = None  # if given, must equal the run's `clients`
    data_root: str = ""  # replaces data.root on this node (where its copy of the dataset lives)
    data_path: str = ""  # an .npz with this client's own samples only (x, y): no partitioning


@dataclass(frozen=True)
class RoundRequest:
    """Server -> client, once per round."""

    round: int
    client_id: int
    measure: bool  # measure one local step's memory and FLOPs (the run's first client, once)
    state: dict[str, Tensor]  # global client (+ aux) state, wire precision
    # This client's own modules (FSL-SAGE's aux head), sent only when the server has a newer
    # one than the client holds; the client keeps it in its SuperNode's persistent context.
    personal: dict[str, Tensor] | None = None
