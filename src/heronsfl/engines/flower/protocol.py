"""What the Flower engine exchanges and how it is set up, as plain dataclasses (no Flower types).

One round is one request/reply per participating client: the server sends a `RoundRequest`
(the global client + aux state at wire precision, the round's indices and the per-step stream's
`StreamSettings`); the client runs its h local steps, each step's traffic on the stream, and
answers with its `messages.ClientResult` (its state or exchange, its losses, its byte counts).
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
    window: int = _f(
        2,
        "per-step stream: most unsent uploads a client holds (and unconsumed ones the server "
        "holds per client) before the sender blocks",
    )
    stream_timeout_s: float = _f(
        60.0,
        "per-step stream: how long the server waits with nothing arriving from a client "
        "(not even a piece of a frame) before dropping it",
    )
    stream_listen: str = _f(
        "127.0.0.1:0", "per-step stream: host:port the main server listens on (port 0: a free one)"
    )
    stream_address: str = _f(
        "", "per-step stream: host:port the clients dial (default: stream_listen's, bound port)"
    )
    stream_ca: str = _f("", "TLS root CA for the stream (the SuperLink's --ssl-ca-certfile)")
    stream_cert: str = _f("", "TLS server certificate for the stream (--ssl-certfile)")
    stream_key: str = _f("", "TLS server key for the stream (--ssl-keyfile)")

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
        if self.window < 1:
            problems.append(f"deploy.window = {self.window} must be >= 1")
        if not self.stream_timeout_s > 0:
            problems.append(f"deploy.stream_timeout_s = {self.stream_timeout_s} must be > 0")
        for key in ("stream_listen", "stream_address"):
            value = getattr(self, key)
            host, _, port = value.rpartition(":")
            if (value or key == "stream_listen") and not (host and port.isdigit()):
                problems.append(f"deploy.{key} = {value!r} must be host:port, e.g. 0.0.0.0:9100")
        tls = [self.stream_ca, self.stream_cert, self.stream_key]
        if any(tls) and not all(tls):
            problems.append(
                "deploy.stream_ca, stream_cert and stream_key go together (TLS for the stream): "
                "give all three, the SuperLink's own files, or none"
            )
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
    stream: StreamSettings | None = None  # where the round's per-step traffic goes


@dataclass(frozen=True)
class StreamSettings:
    """Server -> client with every round request (Flower's authenticated channel): how to
    reach the main server's per-step stream and prove it is this run's client."""

    address: str  # host:port of the main server's stream
    secret: str  # the run's secret (engines/stream/link.new_secret)
    window: int  # most unsent uploads the client holds
    timeout_s: float  # the longest the client waits for the server
    ca_pem: str = ""  # the root CA to verify the stream's TLS certificate ("": plaintext)
