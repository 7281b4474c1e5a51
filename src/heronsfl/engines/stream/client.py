"""A client's end of the stream: dial out, send uploads as they are produced, hold at most a window.

`send` encodes a message and puts it in a queue of `window` frames that gRPC drains onto the
stream; when the server is behind, gRPC's flow control stops draining, the queue fills and
`send` blocks, so the training loop waits instead of piling up activations. `exchange` is the
synchronous step: send, then wait for the server's answer on the same stream. `close` ends the
client's side and waits for the server to confirm the stream ended cleanly.

Every wait is bounded by `timeout_s`; a refused, broken or dropped stream raises StreamError
saying which.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc

from heronsfl.engines.stream import wire
from heronsfl.engines.stream.link import (
    CLIENT_KEY,
    METHOD,
    ROUND_KEY,
    SECRET_KEY,
    Certificates,
    StreamError,
    channel_options,
)

_POLL_S = 0.2
_CLOSE = object()


class StreamClient:
    """One client's stream for one round (`with StreamClient(...) as s:` opens and closes it).

    Args:
        address: the main server's stream address, host:port.
        secret: the run's secret, received over the control plane.
        client_id, round_idx: who is streaming, and for which round.
        window: most encoded messages held here before `send` blocks.
        certificates: the root CA for TLS (`Certificates(ca=...)`); None = plaintext.
        timeout_s: the longest `send`, `exchange` or `close` waits for the server.
        connect_timeout_s: the longest to wait for the server to accept a connection.
    """

    def __init__(
        self,
        address: str,
        secret: str,
        client_id: int,
        round_idx: int,
        window: int = 2,
        certificates: Certificates | None = None,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 60.0,
    ) -> None:
        if window < 1:
            raise ValueError(f"window = {window}: a client must be able to hold one upload")
        self.client_id, self.round_idx, self.timeout_s = client_id, round_idx, timeout_s
        self.peak_queued = 0  # most encoded frames waiting here at once
        self._sent = 0
        self._outgoing: queue.Queue[Any] = queue.Queue(maxsize=window)
        self._replies: queue.Queue[tuple[wire.Message, int] | BaseException] = queue.Queue()
        self._done = threading.Event()
        if certificates is None:
            self._channel = grpc.insecure_channel(address, options=channel_options())
        else:
            self._channel = grpc.secure_channel(
                address, certificates.channel_credentials(), options=channel_options()
            )
        try:
            grpc.channel_ready_future(self._channel).result(timeout=connect_timeout_s)
        except grpc.FutureTimeoutError:
            self._channel.close()
            raise StreamError(
                f"cannot reach the stream server at {address} within {connect_timeout_s:g} s "
                f"(is it running, is the port open, do TLS settings match on both ends?)"
            ) from None
        call = self._channel.stream_stream(METHOD)  # bytes both ways (wire.py frames)
        metadata = ((SECRET_KEY, secret), (CLIENT_KEY, str(client_id)), (ROUND_KEY, str(round_idx)))
        self._call: Any = call(self._frames(), metadata=metadata)
        self._call.add_done_callback(lambda _: self._done.set())
        threading.Thread(target=self._read_replies, daemon=True).start()

    def __enter__(self) -> StreamClient:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def send(self, msg: wire.Message, step: int) -> None:
        """Queue one message; blocks while `window` frames already wait (backpressure)."""
        frame = wire.encode(msg, step)
        deadline = time.monotonic() + self.timeout_s
        while True:
            self._check_open()
            try:
                self._outgoing.put(frame, timeout=_POLL_S)
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    raise StreamError(
                        f"client {self.client_id}: the server took nothing for {self.timeout_s:g} s"
                    ) from None
        self._sent += 1
        self.peak_queued = max(self.peak_queued, self._outgoing.qsize())

    def exchange(self, msg: wire.Message, step: int) -> tuple[wire.Message, int]:
        """A synchronous step: send `msg`, return the server's (answer, step)."""
        self.send(msg, step)
        try:
            got = self._replies.get(timeout=self.timeout_s)
        except queue.Empty:
            raise StreamError(
                f"client {self.client_id}: no answer to step {step} within {self.timeout_s:g} s"
            ) from None
        if isinstance(got, BaseException):
            raise got
        return got

    def close(self) -> None:
        """End this side cleanly and wait until the server has read everything."""
        deadline = time.monotonic() + self.timeout_s
        end = wire.encode(wire.End(self.client_id, self._sent), 0)
        for item in (end, _CLOSE):
            while not self._done.is_set():
                try:
                    self._outgoing.put(item, timeout=_POLL_S)
                    break
                except queue.Full:
                    if time.monotonic() >= deadline:
                        break
        self._done.wait(max(deadline - time.monotonic(), 0))
        try:
            if not self._done.is_set():
                self._call.cancel()
                raise StreamError(
                    f"client {self.client_id}: the server did not finish reading the stream "
                    f"within {self.timeout_s:g} s"
                )
            self._check_status()
        finally:
            self._channel.close()

    def abort(self) -> None:
        """Cancel the stream (the server sees it break and drops this client)."""
        self._call.cancel()
        self._channel.close()

    # ------------------------------------------------------------------ internals

    def _frames(self) -> Iterator[bytes]:
        """What gRPC sends: frames from the queue until close (or the call ended)."""
        while True:
            try:
                frame = self._outgoing.get(timeout=_POLL_S)
            except queue.Empty:
                if self._done.is_set():
                    return
                continue
            if frame is _CLOSE:
                return
            yield from wire.pieces(frame)

    def _read_replies(self) -> None:
        try:
            for frame in wire.frames(self._call):
                self._replies.put(wire.decode(frame))
            # A clean end: nothing more will come (an `exchange` still waiting learns it now).
            self._replies.put(StreamError(f"client {self.client_id}: the stream has ended"))
        except grpc.RpcError as e:
            self._replies.put(_error(self.client_id, e))
        except wire.FrameError as e:
            self._replies.put(StreamError(f"client {self.client_id}: malformed answer: {e}"))
            self._call.cancel()

    def _check_open(self) -> None:
        if self._done.is_set():
            self._check_status()
            raise StreamError(f"client {self.client_id}: the server ended the stream early")

    def _check_status(self) -> None:
        code = self._call.code()
        if code != grpc.StatusCode.OK:
            raise _error(self.client_id, self._call)


def _error(client_id: int, call: Any) -> StreamError:
    code, details = call.code(), call.details()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return StreamError(f"client {client_id}: the server refused the run secret ({details})")
    if code == grpc.StatusCode.UNAVAILABLE:
        return StreamError(f"client {client_id}: the stream server went away ({details})")
    return StreamError(f"client {client_id}: stream ended with {code.name}: {details}")
