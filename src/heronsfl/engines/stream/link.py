"""What both ends of the stream agree on: the method, the metadata keys, TLS and limits."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import grpc

from heronsfl.engines.stream import wire

# The one RPC: a bidirectional stream of frames, in pieces (bytes both ways, see wire.py).
METHOD = "/heronsfl.stream.Steps/Exchange"
SERVICE, METHOD_NAME = METHOD.strip("/").split("/")

# Call metadata (gRPC keys are lower-case ASCII).
SECRET_KEY = "heronsfl-secret"
CLIENT_KEY = "heronsfl-client-id"
ROUND_KEY = "heronsfl-round"


def channel_options() -> list[tuple[str, int]]:
    """gRPC options for both ends: a message is one piece of a frame (wire.PIECE_BYTES + 1)."""
    limit = wire.PIECE_BYTES + 1
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]


def new_secret() -> str:
    """A fresh per-run secret (256 bits, hex): the server's control plane hands it to clients."""
    return secrets.token_hex(32)


class StreamError(ConnectionError):
    """The stream could not be opened, was refused, or broke; the message says which."""


@dataclass(frozen=True)
class Certificates:
    """TLS files, the same as Flower's: root CA, and on the server its certificate and key.

    The server certificate must name the address clients dial (e.g. IP:127.0.0.1).
    """

    ca: Path | bytes  # a file, or its PEM bytes (as a client received them from the server)
    cert: Path | None = None  # server only
    key: Path | None = None  # server only

    def server_credentials(self) -> grpc.ServerCredentials:
        if self.cert is None or self.key is None:
            raise ValueError("a TLS stream server needs its certificate and key (cert=, key=)")
        pair = (self.key.read_bytes(), self.cert.read_bytes())
        return grpc.ssl_server_credentials([pair])

    def channel_credentials(self) -> grpc.ChannelCredentials:
        pem = self.ca if isinstance(self.ca, bytes) else self.ca.read_bytes()
        return grpc.ssl_channel_credentials(root_certificates=pem)
