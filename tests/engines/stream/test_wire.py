"""Frames: bit-exact round trips in every wire dtype, and malformed bytes refused, never run."""

from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch

from heronsfl.engines.stream import wire
from heronsfl.messages import Download, Upload


def _frame(header: dict, payload: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<I", len(raw)) + raw + payload


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_upload_round_trips_bit_for_bit(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    up = Upload(3, torch.randn(4, 2, 3, 3, generator=g).to(dtype), torch.arange(4))

    msg, step = wire.decode(wire.encode(up, step=7))

    assert isinstance(msg, Upload) and step == 7 and msg.client_id == 3
    assert msg.activations.dtype == dtype and msg.activations.shape == (4, 2, 3, 3)
    # Compare bits, not values: NaN payloads and -0.0 must survive too.
    carrier = torch.int16 if dtype != torch.float32 else torch.int32
    assert torch.equal(msg.activations.view(carrier), up.activations.view(carrier))
    assert torch.equal(msg.labels, up.labels)


def test_download_and_scalars_round_trip() -> None:
    down = Download(1, torch.tensor([[-0.0, float("nan")], [1e-8, 65504.0]], dtype=torch.float16))
    sc = wire.Scalars(2, 5, torch.tensor([0.5, -1.25, 3.0]))

    got_down, _ = wire.decode(wire.encode(down, 0))
    got_sc, step = wire.decode(wire.encode(sc, 5))

    assert torch.equal(got_down.gradient.view(torch.int16), down.gradient.view(torch.int16))
    assert isinstance(got_sc, wire.Scalars) and (got_sc.client_id, got_sc.step, step) == (2, 5, 5)
    assert torch.equal(got_sc.values, sc.values)


def test_end_frame_carries_the_count() -> None:
    msg, step = wire.decode(wire.encode(wire.End(4, 12), step=0))
    assert msg == wire.End(4, 12) and step == 12


def test_frame_size_is_payload_plus_a_small_header() -> None:
    up = Upload(
        0, torch.zeros(32, 16, 8, 8, dtype=torch.float16), torch.zeros(32, dtype=torch.int64)
    )
    payload = 32 * 16 * 8 * 8 * 2 + 32 * 8

    n = len(wire.encode(up, 0))

    assert payload < n < payload + 200


def test_decoded_tensors_own_their_memory() -> None:
    frame = wire.encode(Upload(0, torch.ones(2, 2), torch.zeros(2, dtype=torch.int64)), 0)
    msg, _ = wire.decode(frame)
    msg.activations.add_(1)  # would raise on a read-only view of the received bytes
    assert msg.activations.sum().item() == 8.0


def _upload_header(**overrides) -> dict:
    header = {
        "v": 1,
        "kind": "upload",
        "client_id": 0,
        "step": 0,
        "t": [["activations", "float32", [2], 8], ["labels", "int64", [2], 16]],
    }
    header.update(overrides)
    return header


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b"\x01", "no header"),
        (struct.pack("<I", 10**6) + b"{}", "does not fit"),
        (struct.pack("<I", 3) + b"abc", "not JSON"),
        (_frame({"v": 99}), "version 99"),
        (_frame(_upload_header(kind="model")), "unknown frame kind"),
        (_frame(_upload_header(client_id=-1), bytes(24)), "client_id, step"),
        (_frame(_upload_header(t=[["labels", "int64", [2], 16]]), bytes(16)), "not tensors"),
        (
            _frame(
                _upload_header(t=[["activations", "object", [2], 16], ["labels", "int64", [2], 16]])
            ),
            "dtype 'object'",
        ),
        (_frame(_upload_header(), bytes(20)), "past the frame"),
        (_frame(_upload_header(), bytes(30)), "trailing bytes"),
        (
            _frame(
                _upload_header(t=[["activations", "float32", [2], 8], ["labels", "int32", [2], 8]]),
                bytes(16),
            ),
            "not int64",
        ),
        (
            _frame(
                _upload_header(
                    t=[["activations", "float32", [2, -1], 8], ["labels", "int64", [2], 16]]
                )
            ),
            "malformed shape",
        ),
    ],
)
def test_malformed_frames_are_refused(frame: bytes, match: str) -> None:
    with pytest.raises(wire.FrameError, match=match):
        wire.decode(frame)


def test_a_pickle_is_not_a_frame() -> None:
    # A pickle that would run code when unpickled: decode must refuse it, never load it.
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled')",))

    with pytest.raises(wire.FrameError):
        wire.decode(pickle.dumps(Boom()))
    with pytest.raises(wire.FrameError):
        wire.decode(_frame(_upload_header(), pickle.dumps(Boom())))


def test_only_stream_messages_and_plain_dtypes_are_encoded() -> None:
    with pytest.raises(TypeError, match="cannot send"):
        wire.encode(torch.zeros(2), 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="complex64"):
        wire.encode(Download(0, torch.zeros(2, dtype=torch.complex64)), 0)


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 100])
def test_pieces_carry_a_frame_whole_and_mark_its_end(size: int) -> None:
    frame = bytes(range(size))
    got = list(wire.pieces(frame, size=8))
    assert len(got) == max(1, -(-size // 8))
    assert [p[:1] for p in got] == [b"\x00"] * (len(got) - 1) + [b"\x01"]
    assert list(wire.frames(got + got)) == [frame, frame]


def test_pieces_that_stop_inside_a_frame_yield_nothing_of_it() -> None:
    # (the stream broke: the caller sees the pieces end without the client's end frame)
    got = list(wire.pieces(b"abcdefghijklmnop", size=4))
    assert list(wire.frames(got[:-1])) == []
    arrivals = []
    assert list(wire.frames(got, on_piece=lambda: arrivals.append(1))) == [b"abcdefghijklmnop"]
    assert len(arrivals) == 4


def test_bad_pieces_are_refused() -> None:
    with pytest.raises(wire.FrameError, match="not a continuation flag"):
        list(wire.frames([b"\x07abc"]))
    with pytest.raises(wire.FrameError, match="not a continuation flag"):
        list(wire.frames([b""]))
    with pytest.raises(wire.FrameError, match="a frame above 10 bytes"):
        list(wire.frames(wire.pieces(bytes(11), size=4), max_bytes=10))
