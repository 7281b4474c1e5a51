"""The main server's end of the stream: admit clients, consume their uploads in order, drop faults.

Each client's stream in a round is a `_Link`. A reader thread per link pulls frames from gRPC
only while the link holds fewer than `window` unconsumed messages (a semaphore of `window`
slots), so a server that is behind stops reading, HTTP/2 flow control stops the client's
writes, and the client's own bounded queue then blocks its training loop. The round loop takes
messages with `receive` (one client) or `uploads` (every client, in the simulator's order) and
answers synchronous steps with `reply` on the same stream.

A client ends its stream cleanly with an `end` frame (gRPC ends the request iterator the same
way when the peer died, so only that frame tells the two apart). Every wait is bounded by
`timeout_s`: a client that has not connected, or sends nothing, for that long is dropped, as is
one whose stream breaks (process killed, connection lost) or sends a malformed frame; messages
received before the break are still delivered. Dropped clients are named in `dropped[round]`
and in the log; the round goes on with the others. `uploads`' orders are `train.server_order`'s.
"""

from __future__ import annotations

import hmac
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc

from heronsfl.engines.stream import wire
from heronsfl.engines.stream.link import (
    CLIENT_KEY,
    METHOD_NAME,
    ROUND_KEY,
    SECRET_KEY,
    SERVICE,
    Certificates,
    channel_options,
)

log = logging.getLogger(__name__)

Order = Literal["round-robin", "client-by-client"]
_POLL_S = 0.2  # how often blocked threads look whether their link was dropped


class ClientDropped(Exception):
    """A client's stream ended abnormally; `reason` says how."""

    def __init__(self, client_id: int, reason: str) -> None:
        super().__init__(f"client {client_id} dropped: {reason}")
        self.client_id, self.reason = client_id, reason


@dataclass
class _Received:
    msg: wire.Message
    step: int
    nbytes: int


_END = "end"  # the client closed its side cleanly: no more messages


@dataclass
class _Link:
    """One client's stream in one round."""

    client_id: int
    round: int
    window: int
    context: Any = None  # grpc.ServicerContext
    inbox: queue.Queue[_Received | str] = field(default_factory=queue.Queue)
    outbox: queue.Queue[bytes | None] = field(default_factory=queue.Queue)
    slots: threading.Semaphore = field(init=False)
    dropped: threading.Event = field(default_factory=threading.Event)
    reason: str = ""
    finished: bool = False  # the round loop has seen the client's clean close
    count: int = 0  # frames received
    last_piece: float = 0.0  # monotonic time the latest piece of a frame arrived
    held_bytes: int = 0
    peak_held: int = 0

    def __post_init__(self) -> None:
        self.slots = threading.Semaphore(self.window)


class StreamServer:
    """gRPC server for the clients' streams; `with StreamServer(...) as s:` starts and stops it.

    Args:
        secret: the run's secret; a call without it is refused before any frame is read.
        window: how many received, unconsumed messages the server holds per client.
        timeout_s: the longest a client may stay silent (before its first frame, or between
            frames) while the round loop waits for it, before it is dropped.
        address: host:port to listen on; port 0 picks a free one (see `port`).
        certificates: TLS (root CA + server certificate and key); None = plaintext.
        max_clients: concurrent streams served (more are refused with RESOURCE_EXHAUSTED).
    """

    def __init__(
        self,
        secret: str,
        window: int = 2,
        timeout_s: float = 60.0,
        address: str = "127.0.0.1:0",
        certificates: Certificates | None = None,
        max_clients: int = 64,
    ) -> None:
        if window < 1:
            raise ValueError(f"window = {window}: the server must hold at least one message")
        if not secret:
            raise ValueError("the stream needs a non-empty per-run secret (link.new_secret())")
        self.window, self.timeout_s = window, timeout_s
        self.tls = certificates is not None
        self.dropped: dict[int, dict[int, str]] = {}  # round -> client id -> reason
        self.frames_received = 0  # frames pulled off admitted streams (before decoding)
        self.bytes_received = 0  # their bytes (frames as sent: headers + tensor bytes)
        self.bytes_sent = 0  # bytes of the answers queued for the clients
        self.refused = 0  # calls refused by the secret check
        self.peak_held_bytes = 0  # most bytes of unconsumed messages held at once, all clients
        self._links: dict[tuple[int, int], _Link] = {}
        self._given_up: dict[tuple[int, int], str] = {}  # clients not to wait for, and why
        self._cond = threading.Condition()
        self._held_total = 0
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {METHOD_NAME: grpc.stream_stream_rpc_method_handler(self._serve)},  # bytes in/out
        )
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_clients + 2, thread_name_prefix="stream"),
            handlers=[handler],
            interceptors=[_SecretCheck(secret, self)],
            options=channel_options(),
            maximum_concurrent_rpcs=max_clients,
        )
        if certificates is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, certificates.server_credentials())
        if self.port == 0:
            raise OSError(f"cannot listen on {address} for the stream")
        self.host = address.rsplit(":", 1)[0]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> StreamServer:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, grace_s: float = 1.0) -> None:
        for link in list(self._links.values()):
            self._drop(link, "server stopped", record=False)
        self._server.stop(grace_s).wait(grace_s + 5)

    # ------------------------------------------------------------------ round loop side

    def receive(self, round_idx: int, client_id: int) -> tuple[wire.Message, int] | None:
        """The next (message, step) from a client, or None once it closed its stream cleanly.

        Raises ClientDropped (and records it) when the client is silent past `timeout_s`, its
        stream broke, or it sent a malformed frame.
        """
        link = self._wait_link(round_idx, client_id)
        if link.finished:
            return None
        deadline = time.monotonic() + self.timeout_s
        while True:
            # Messages received before a stream broke are still delivered, then the drop.
            try:
                item = link.inbox.get(timeout=_POLL_S)
            except queue.Empty:
                if link.dropped.is_set():
                    raise ClientDropped(client_id, link.reason) from None
                # A frame still arriving piece by piece is progress, not silence.
                if time.monotonic() >= max(deadline, link.last_piece + self.timeout_s):
                    self._drop(link, f"nothing received for {self.timeout_s:g} s (stalled)")
                continue
            if item == _END:
                link.finished = True
                return None
            assert isinstance(item, _Received), "inbox holds received frames and the end mark"
            with self._cond:
                link.held_bytes -= item.nbytes
                self._held_total -= item.nbytes
            link.slots.release()  # the reader may pull the next frame off the stream
            return item.msg, item.step

    def reply(self, round_idx: int, client_id: int, msg: wire.Message, step: int) -> None:
        """Answer a synchronous step on the client's stream (does not wait for delivery)."""
        link = self._links.get((round_idx, client_id))
        if link is None or link.dropped.is_set():
            raise ClientDropped(client_id, link.reason if link else "never connected")
        frame = wire.encode(msg, step)
        with self._cond:
            self.bytes_sent += len(frame)
        link.outbox.put(frame)

    def give_up(self, round_idx: int, client_id: int, reason: str) -> None:
        """Stop waiting for a client in this round (the control plane knows it has failed):
        it is dropped with `reason`, whether or not it has opened its stream."""
        with self._cond:
            link = self._links.get((round_idx, client_id))
            if link is None:
                self._given_up[(round_idx, client_id)] = reason
                self.dropped.setdefault(round_idx, {})[client_id] = reason
                self._cond.notify_all()
                return
        self._drop(link, reason)

    def uploads(
        self, round_idx: int, clients: Sequence[int], order: Order = "round-robin"
    ) -> Iterator[tuple[int, int, wire.Message]]:
        """(client id, step, message) from every client until each ends its stream or drops.

        round-robin: every client's first message in client order, then every client's
        second, ... (the simulator's lockstep); client-by-client: all of a client's, then the
        next client's. A dropped client is recorded in `dropped[round_idx]` and skipped.
        """
        if order not in ("round-robin", "client-by-client"):
            raise ValueError(f"order = {order!r}; use round-robin or client-by-client")
        active = list(clients)
        while active:
            for cid in list(active) if order == "round-robin" else active[:1]:
                got = self._next(round_idx, cid)
                if got is None:
                    active.remove(cid)
                else:
                    yield cid, got[1], got[0]

    def end_round(self, round_idx: int) -> None:
        """Release the round's streams (a client still sending is cut off)."""
        with self._cond:
            for key in [k for k in self._given_up if k[0] == round_idx]:
                del self._given_up[key]
        for (r, _), link in list(self._links.items()):
            if r == round_idx:
                self._drop(link, "round ended", record=False)
                with self._cond:
                    self._links.pop((r, link.client_id), None)
                    self._held_total -= link.held_bytes  # what the round loop left unread

    def peak_held(self, round_idx: int, client_id: int) -> int:
        """Most unconsumed messages held at once for this client in this round."""
        return self._links[(round_idx, client_id)].peak_held

    def _next(self, round_idx: int, client_id: int) -> tuple[wire.Message, int] | None:
        try:
            return self.receive(round_idx, client_id)
        except ClientDropped as e:
            log.warning("round %d: %s", round_idx, e)
            return None

    def _wait_link(self, round_idx: int, client_id: int) -> _Link:
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            while (link := self._links.get((round_idx, client_id))) is None:
                if (reason := self._given_up.get((round_idx, client_id))) is not None:
                    raise ClientDropped(client_id, reason)
                left = deadline - time.monotonic()
                if left <= 0:
                    reason = f"did not open its stream within {self.timeout_s:g} s"
                    self.dropped.setdefault(round_idx, {})[client_id] = reason
                    raise ClientDropped(client_id, reason)
                self._cond.wait(left)
        return link

    def _drop(self, link: _Link, reason: str, record: bool = True) -> None:
        with self._cond:
            if link.dropped.is_set():
                return
            link.reason = reason
            link.dropped.set()
            if record:
                self.dropped.setdefault(link.round, {})[link.client_id] = reason
        link.outbox.put(None)  # ends the response stream; the call is aborted (below)

    # ------------------------------------------------------------------ gRPC side

    def _serve(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        """One client's call: register its link, read in the background, write the replies."""
        md = dict(context.invocation_metadata())
        try:
            client_id, round_idx = int(md[CLIENT_KEY]), int(md[ROUND_KEY])
        except (KeyError, ValueError):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"metadata needs {CLIENT_KEY} and {ROUND_KEY}"
            )
        with self._cond:
            key = (round_idx, client_id)
            if key in self._links:
                context.abort(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"client {client_id} already has a stream in round {round_idx}",
                )
            link = self._links[key] = _Link(client_id, round_idx, self.window, context)
            self._cond.notify_all()
        reader = threading.Thread(target=self._read, args=(link, requests), daemon=True)
        reader.start()
        while context.is_active():
            try:
                out = link.outbox.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if out is None:
                break
            yield from wire.pieces(out)
        if link.dropped.is_set():
            context.abort(grpc.StatusCode.ABORTED, f"dropped by the server: {link.reason}")

    def _read(self, link: _Link, requests: Iterator[bytes]) -> None:
        """Pull frames while the link has a free slot; decode; hand them to the round loop."""

        def arrived() -> None:
            link.last_piece = time.monotonic()

        received = wire.frames(requests, on_piece=arrived)
        try:
            while True:
                while not link.slots.acquire(timeout=_POLL_S):
                    if link.dropped.is_set():
                        return
                if link.dropped.is_set():
                    return
                frame = next(received, None)
                if frame is None:
                    # gRPC ends the iterator like this when the connection died, too.
                    self._drop(link, "stream broken (closed without its end frame)")
                    return
                with self._cond:
                    self.frames_received += 1
                    self.bytes_received += len(frame)
                msg, step = wire.decode(frame)
                if msg.client_id != link.client_id:
                    raise wire.FrameError(
                        f"a frame for client {msg.client_id} on client {link.client_id}'s stream"
                    )
                link.count += 1
                if isinstance(msg, wire.End):
                    if msg.count != link.count - 1:
                        raise wire.FrameError(
                            f"end frame says {msg.count} sent, {link.count - 1} came"
                        )
                    link.inbox.put(_END)  # a clean close
                    link.outbox.put(None)  # every answer precedes the client's close
                    return
                with self._cond:
                    link.held_bytes += len(frame)
                    self._held_total += len(frame)
                    self.peak_held_bytes = max(self.peak_held_bytes, self._held_total)
                link.inbox.put(_Received(msg, step, len(frame)))
                link.peak_held = max(link.peak_held, link.inbox.qsize())
        except wire.FrameError as e:
            self._drop(link, f"malformed frame: {e}")
        except Exception as e:  # noqa: BLE001 - grpc raises bare RpcErrors for a broken stream
            if not link.dropped.is_set():
                self._drop(link, f"stream broken ({type(e).__name__}: {e or 'connection lost'})")


class _SecretCheck(grpc.ServerInterceptor):
    """Admits a call only with the run's secret in its metadata; runs before any frame is read."""

    def __init__(self, secret: str, server: StreamServer) -> None:
        self._secret = secret.encode()
        self._server = server
        self._refuse = grpc.stream_stream_rpc_method_handler(self._abort)

    def intercept_service(
        self, continuation: Any, handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        given = dict(handler_call_details.invocation_metadata).get(SECRET_KEY, "")
        if isinstance(given, str) and hmac.compare_digest(given.encode(), self._secret):
            return continuation(handler_call_details)
        self._server.refused += 1
        return self._refuse

    @staticmethod
    def _abort(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, f"missing or wrong {SECRET_KEY}")
        yield b""  # pragma: no cover - abort raises; this makes the handler a generator
