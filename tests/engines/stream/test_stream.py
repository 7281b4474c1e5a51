"""The stream over real sockets on 127.0.0.1: order, synchronous answers, backpressure, security.

Clients run in threads here (each with its own gRPC channel and connection); test_faults.py
uses real client processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
import torch

from heronsfl.engines.stream import wire
from heronsfl.engines.stream.client import StreamClient
from heronsfl.engines.stream.link import Certificates, StreamError, new_secret
from heronsfl.engines.stream.server import StreamServer
from heronsfl.messages import Download, Upload

SECRET = new_secret()


def _upload(cid: int, step: int, numel: int = 6) -> Upload:
    value = float(100 * cid + step)
    return Upload(cid, torch.full((numel,), value, dtype=torch.float16), torch.tensor([cid, step]))


def _in_threads(*targets: Callable[[], None]) -> Callable[[], None]:
    """Start each target in a thread; the returned join re-raises the first failure."""
    errors: list[BaseException] = []

    def wrap(fn: Callable[[], None]) -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(t,), daemon=True) for t in targets]
    for t in threads:
        t.start()

    def join() -> None:
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads), "a client thread hung"
        if errors:
            raise errors[0]

    return join


def _sender(address: str, cid: int, steps: int, **kw) -> Callable[[], None]:
    def run() -> None:
        with StreamClient(address, SECRET, cid, 0, **kw) as c:
            for s in range(steps):
                c.send(_upload(cid, s), s)

    return run


@pytest.mark.parametrize("order", ["round-robin", "client-by-client"])
def test_uploads_arrive_in_the_simulators_order(order: str) -> None:
    # Prepare: clients with different numbers of uploads, started in reverse order.
    steps = {0: 3, 1: 2, 2: 3}
    with StreamServer(SECRET, window=2, timeout_s=10) as server:
        join = _in_threads(*(_sender(server.address, c, steps[c]) for c in (2, 1, 0)))

        # Execute
        got = [(cid, step, msg) for cid, step, msg in server.uploads(0, [0, 1, 2], order)]
        join()

    # Assert: the order, and each message intact and from the client it claims.
    if order == "round-robin":
        expected = [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (0, 2), (2, 2)]
    else:
        expected = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    assert [(c, s) for c, s, _ in got] == expected
    for cid, step, msg in got:
        assert torch.equal(msg.activations, _upload(cid, step).activations)
        assert msg.labels.tolist() == [cid, step]
    assert server.dropped == {}


def test_synchronous_steps_get_their_answer_on_the_same_stream() -> None:
    # An SFL step (gradient down) followed by an HO-SFL style scalar exchange, 3 steps, 2 clients.
    answers: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {0: [], 1: []}

    def client(cid: int) -> Callable[[], None]:
        def run() -> None:
            with StreamClient(server.address, SECRET, cid, 4, window=1) as c:
                for s in range(3):
                    grad, gstep = c.exchange(_upload(cid, s), s)
                    sc = wire.Scalars(cid, s, torch.tensor([float(cid), float(s)]))
                    mean, _ = c.exchange(sc, s)
                    assert gstep == s
                    answers[cid].append((grad.gradient, mean.values))

        return run

    with StreamServer(SECRET, window=1, timeout_s=10) as server:
        join = _in_threads(client(0), client(1))
        for s in range(3):
            for cid in (0, 1):  # lockstep: the server answers each client's step in turn
                msg, step = server.receive(4, cid)
                assert isinstance(msg, Upload) and step == s
                server.reply(4, cid, Download(cid, msg.activations * 2), step)
            scalars = [server.receive(4, cid)[0].values for cid in (0, 1)]
            mean = torch.stack(scalars).mean(0)
            for cid in (0, 1):
                server.reply(4, cid, wire.Scalars(cid, s, mean), s)
        assert server.receive(4, 0) is None and server.receive(4, 1) is None  # clean closes
        join()

    for cid in (0, 1):
        for s, (grad, mean) in enumerate(answers[cid]):
            assert torch.equal(grad, _upload(cid, s).activations * 2)
            assert mean.tolist() == [0.5, float(s)]


def test_a_client_blocks_when_the_server_is_behind_and_memory_stays_bounded() -> None:
    # Prepare: 64 uploads of 0.5 MB, window 2; the server reads nothing at first.
    window, numel, total = 2, 256 * 1024, 64
    sent: list[int] = []

    def run() -> None:
        with StreamClient(server.address, SECRET, 0, 0, window=window) as c:
            for s in range(total):
                c.send(_upload(0, s, numel), s)
                sent.append(s)
            assert c.peak_queued <= window

    with StreamServer(SECRET, window=window, timeout_s=10) as server:
        join = _in_threads(run)
        plateau = _wait_for_plateau(sent, quiet_s=0.5, limit_s=10)

        # Execute: now consume everything.
        got = [step for _, step, _ in server.uploads(0, [0])]
        join()
        peak_per_client = server.peak_held(0, 0)

    # Assert: with nobody reading, the client stopped: its window, the server's window and
    # what gRPC's HTTP/2 flow-control windows buffer in between (a few MB), not all 32 MB.
    assert plateau < total, "the client sent everything with nobody reading"
    assert got == list(range(total))
    assert peak_per_client <= window
    assert server.peak_held_bytes <= window * (numel * 2 + 200)


def _wait_for_plateau(sent: list[int], quiet_s: float, limit_s: float) -> int:
    """len(sent) once it has not grown for quiet_s (or after limit_s)."""
    deadline, last, since = time.monotonic() + limit_s, -1, time.monotonic()
    while time.monotonic() < deadline:
        if len(sent) != last:
            last, since = len(sent), time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
        time.sleep(0.05)
    return len(sent)


def test_tls_stream_works_and_a_plaintext_client_cannot_connect(
    certificates: Certificates,
) -> None:
    with StreamServer(SECRET, certificates=certificates, timeout_s=10) as server:
        join = _in_threads(
            _sender(server.address, 0, 3, certificates=Certificates(ca=certificates.ca))
        )
        got = [(c, s) for c, s, _ in server.uploads(0, [0])]
        join()
        with pytest.raises(StreamError, match="cannot reach"):
            StreamClient(server.address, SECRET, 1, 0, connect_timeout_s=1.0)

    assert got == [(0, 0), (0, 1), (0, 2)]
    assert server.tls


def test_a_client_that_does_not_trust_the_servers_ca_cannot_connect(
    certificates: Certificates, tmp_path
) -> None:
    from heronsfl.engines.stream.certs import local_certificates

    other = local_certificates(tmp_path / "other", ca_name="another CA")
    with StreamServer(SECRET, certificates=certificates) as server:
        with pytest.raises(StreamError, match="cannot reach"):
            StreamClient(server.address, SECRET, 0, 0, certificates=other, connect_timeout_s=1.0)


@pytest.mark.parametrize("secret", ["", "0" * 64, SECRET[:-1]])
def test_a_stream_without_the_run_secret_is_refused_before_any_payload_is_read(
    secret: str, certificates: Certificates
) -> None:
    # Prepare: a raw gRPC call (what any client could do), not StreamClient.
    from heronsfl.engines.stream.link import CLIENT_KEY, METHOD, ROUND_KEY, SECRET_KEY

    frame = wire.encode(_upload(0, 0), 0)
    with StreamServer(SECRET, certificates=certificates, timeout_s=5) as server:
        creds = grpc.ssl_channel_credentials(certificates.ca.read_bytes())
        with grpc.secure_channel(server.address, creds) as channel:
            metadata = [(CLIENT_KEY, "0"), (ROUND_KEY, "0")]
            if secret:
                metadata.append((SECRET_KEY, secret))
            call = channel.stream_stream(METHOD)(wire.pieces(frame), metadata=metadata)

            # Execute
            with pytest.raises(grpc.RpcError) as info:
                list(call)

        # Assert: refused, nothing read, nothing registered for the round loop.
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert server.refused == 1
        assert server.frames_received == 0
        with pytest.raises(Exception, match="did not open its stream"):
            server.timeout_s = 0.3
            server.receive(0, 0)


def test_stream_client_reports_a_wrong_secret_clearly() -> None:
    with StreamServer(SECRET, timeout_s=5) as server:
        with pytest.raises(StreamError, match="refused the run secret"):
            with StreamClient(server.address, "wrong", 0, 0, timeout_s=5) as c:
                c.exchange(_upload(0, 0), 0)
    assert server.frames_received == 0


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ([b"\x02not a piece"], "malformed frame: a stream piece starts with b'\\x02'"),
        ([*wire.pieces(b"not a frame at all")], "malformed frame: frame header of"),
        ([*wire.pieces(wire.encode(_upload(5, 0), 0))], "malformed frame: a frame for client 5"),
        ([*wire.pieces(wire.encode(wire.End(0, 3), 0))], "malformed frame: end frame says 3 sent"),
    ],
)
def test_an_admitted_client_sending_a_bad_frame_is_dropped_and_named(
    frame: list[bytes], reason: str
) -> None:
    from heronsfl.engines.stream.link import CLIENT_KEY, METHOD, ROUND_KEY, SECRET_KEY

    with StreamServer(SECRET, timeout_s=5) as server:
        with grpc.insecure_channel(server.address) as channel:
            metadata = [(SECRET_KEY, SECRET), (CLIENT_KEY, "0"), (ROUND_KEY, "0")]
            call = channel.stream_stream(METHOD)(iter(frame), metadata=metadata)
            got = list(server.uploads(0, [0]))
            with pytest.raises(grpc.RpcError) as info:
                list(call)

    assert got == []
    assert server.dropped[0][0].startswith(reason)
    assert info.value.code() == grpc.StatusCode.ABORTED
    assert "dropped by the server: malformed frame" in info.value.details()


def test_a_client_dropped_for_silence_is_told_why() -> None:
    with StreamServer(SECRET, timeout_s=0.5) as server:
        client = StreamClient(server.address, SECRET, 0, 0, timeout_s=5)
        client.send(_upload(0, 0), 0)

        got = [(c, s) for c, s, _ in server.uploads(0, [0])]  # then silence: dropped

        with pytest.raises(StreamError, match=r"ABORTED: dropped by the server: nothing received"):
            client.close()

    assert got == [(0, 0)]
    assert server.dropped == {0: {0: "nothing received for 0.5 s (stalled)"}}


def test_a_frame_still_arriving_piece_by_piece_is_not_a_stall() -> None:
    # Prepare: one upload of 4 pieces sent 0.3 s apart (a slow link): 0.9 s for the frame,
    # against a 0.5 s timeout that no gap between pieces reaches.
    from heronsfl.engines.stream.link import CLIENT_KEY, METHOD, ROUND_KEY, SECRET_KEY

    up = _upload(0, 0, numel=3 * wire.PIECE_BYTES // 2 + 1000)  # float16: just over 3 MiB
    pieces = list(wire.pieces(wire.encode(up, 0)))
    assert len(pieces) == 4

    def slowly() -> Iterator[bytes]:
        for piece in pieces:
            yield piece
            time.sleep(0.3)
        yield from wire.pieces(wire.encode(wire.End(0, 1), 0))

    with StreamServer(SECRET, timeout_s=0.5) as server:
        with grpc.insecure_channel(server.address) as channel:
            metadata = [(SECRET_KEY, SECRET), (CLIENT_KEY, "0"), (ROUND_KEY, "0")]
            call = channel.stream_stream(METHOD)(slowly(), metadata=metadata)
            # Execute
            got = list(server.uploads(0, [0]))
            assert list(call) == []
    # Assert: delivered whole, nobody dropped.
    assert [(c, s) for c, s, _ in got] == [(0, 0)]
    assert torch.equal(got[0][2].activations, up.activations)
    assert server.dropped == {}
