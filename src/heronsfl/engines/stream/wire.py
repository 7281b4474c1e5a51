"""Frames of the per-step stream: heronsfl messages <-> bytes, pickle-free.

A frame is one message of the stream:

    uint32 little-endian n | n bytes of UTF-8 JSON header | tensor bytes, back to back

A frame crosses gRPC as one or more pieces (`pieces` / `frames`): each piece is a flag byte (more
to come, or the frame's last) and at most `PIECE_BYTES` of the frame. On a slow link a 33.6 MB
upload takes about a minute at 5 Mbit/s; its pieces arriving are what tell the server that a
client is sending rather than stalled.

The header names the kind (`upload`, `download`, `scalars`, `end`), the client, the local step and,
per tensor, its name, dtype, shape and byte count; the tensors follow as raw little-endian C-order
bytes (bfloat16 too: NumPy lacks it, torch reads it back bit for bit). Decoding checks every
count against the frame's length and accepts only plain numeric dtypes, so a frame can be
malformed but never executes anything: there is no pickle anywhere.

Why not engines/flower/codec.py's `.npy` arrays: they are Flower `Array`s (importing Flower into
every stream process) and `np.save` copies each tensor once more; here encoding is one copy into
the frame and decoding one copy out of it, which matters at 33.6 MB per ResNet-18 step.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from heronsfl.messages import Download, Upload

VERSION = 1
_LEN = struct.Struct("<I")
_MAX_HEADER_BYTES = 64 * 1024  # a header lists a few tensors; anything bigger is not ours
PIECE_BYTES = 1 << 20
MAX_FRAME_BYTES = 1 << 30  # the largest frame either end accepts (a ResNet-18 step: 33.6 MB)
_MORE, _LAST = b"\x00", b"\x01"

# Dtypes a frame may carry, by the name in the header: what heronsfl sends, nothing else.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_NAMES = {v: k for k, v in DTYPES.items()}

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("the heronsfl stream sends raw little-endian tensors; this host is not")


class FrameError(ValueError):
    """Bytes that are not a frame this version of heronsfl sends."""


@dataclass(frozen=True)
class Scalars:
    """HO-SFL's per-step scalars: a client's P probe values up, their mean over clients down.

    values: (P,) float32. `step` is the client's local step they belong to.
    """

    client_id: int
    step: int
    values: Tensor


@dataclass(frozen=True)
class End:
    """A client's last frame: it sent `count` messages before it and closes cleanly.

    gRPC ends a server's request iterator the same way for a clean close and for a client whose
    connection died, so only this frame tells the two apart.
    """

    client_id: int
    count: int


Message = Upload | Download | Scalars | End

# kind -> (message class, tensor fields in frame order)
_KINDS: dict[str, tuple[type, tuple[str, ...]]] = {
    "upload": (Upload, ("activations", "labels")),
    "download": (Download, ("gradient",)),
    "scalars": (Scalars, ("values",)),
    "end": (End, ()),
}


def encode(msg: Message, step: int) -> bytes:
    """One frame for `msg`, the message of local step `step` (one copy of each tensor).

    For `End`, `step` is ignored: the frame's step field carries its count.
    """
    if isinstance(msg, End):
        step = msg.count
    kind = next((k for k, (cls, _) in _KINDS.items() if isinstance(msg, cls)), None)
    if kind is None:
        raise TypeError(f"cannot send a {type(msg).__name__} on the stream")
    names = _KINDS[kind][1]
    arrays, specs = [], []
    for name in names:
        t: Tensor = getattr(msg, name).detach().cpu().contiguous()
        if t.dtype not in _NAMES:
            raise TypeError(f"{kind}.{name}: dtype {t.dtype} is not sent on the stream")
        # bfloat16 has no NumPy dtype: its bytes travel as int16, bit for bit.
        nd = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()
        arrays.append(memoryview(nd).cast("B") if nd.nbytes else b"")
        specs.append([name, _NAMES[t.dtype], list(t.shape), nd.nbytes])
    header = {"v": VERSION, "kind": kind, "client_id": msg.client_id, "step": step, "t": specs}
    raw = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([_LEN.pack(len(raw)), raw, *arrays])


def decode(frame: bytes) -> tuple[Message, int]:
    """(message, local step) of a frame; raises FrameError for anything malformed."""
    header, offset = _header(frame)
    kind = header.get("kind")
    if kind not in _KINDS:
        raise FrameError(f"unknown frame kind {kind!r}; known: {', '.join(_KINDS)}")
    cls, names = _KINDS[kind]
    client_id, step, specs = header.get("client_id"), header.get("step"), header.get("t")
    if not (_is_int(client_id) and _is_int(step) and isinstance(specs, list)):
        raise FrameError(f"{kind} frame: client_id, step and tensors are required")
    if [s[0] if isinstance(s, list) and len(s) == 4 else None for s in specs] != list(names):
        raise FrameError(f"{kind} frame carries {specs!r:.200}, not tensors {list(names)}")
    tensors: dict[str, Any] = {}
    for name, dtype_name, shape, nbytes in specs:
        tensors[name] = _tensor(frame, offset, f"{kind}.{name}", dtype_name, shape, nbytes)
        offset += nbytes
    if offset != len(frame):
        raise FrameError(f"{kind} frame: {len(frame) - offset} trailing bytes")
    if kind == "upload" and tensors["labels"].dtype != torch.int64:
        raise FrameError(f"upload frame: labels are {tensors['labels'].dtype}, not int64")
    if kind == "scalars":
        return cls(client_id, step, tensors["values"]), step
    if kind == "end":
        return cls(client_id, step), step
    return cls(client_id, **tensors), step


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _header(frame: bytes) -> tuple[dict[str, Any], int]:
    if len(frame) < _LEN.size:
        raise FrameError(f"frame of {len(frame)} bytes has no header")
    (n,) = _LEN.unpack_from(frame)
    if n > _MAX_HEADER_BYTES or _LEN.size + n > len(frame):
        raise FrameError(f"frame header of {n} bytes does not fit a {len(frame)}-byte frame")
    try:
        header = json.loads(frame[_LEN.size : _LEN.size + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FrameError(f"frame header is not JSON ({e})") from None
    if not isinstance(header, dict) or header.get("v") != VERSION:
        raise FrameError(
            f"frame version {header.get('v') if isinstance(header, dict) else None!r}, "
            f"this heronsfl speaks {VERSION}: run the same heronsfl version on both ends"
        )
    return header, _LEN.size + n


def _tensor(
    frame: bytes, offset: int, what: str, dtype_name: object, shape: object, nbytes: object
) -> Tensor:
    if dtype_name not in DTYPES:
        raise FrameError(f"{what}: dtype {dtype_name!r} is not one heronsfl sends")
    if not (isinstance(shape, list) and all(_is_int(d) for d in shape) and _is_int(nbytes)):
        raise FrameError(f"{what}: malformed shape {shape!r} or size {nbytes!r}")
    dtype = DTYPES[dtype_name]  # type: ignore[index]
    count = int(np.prod(shape)) if shape else 1
    if count * dtype.itemsize != nbytes or offset + nbytes > len(frame):
        raise FrameError(f"{what}: {nbytes} bytes for {dtype_name} {shape}, or past the frame")
    carrier = torch.int16 if dtype == torch.bfloat16 else dtype
    np_dtype = torch.empty(0, dtype=carrier).numpy().dtype
    # np.frombuffer shares the received bytes (read-only); the copy gives torch its own memory.
    nd = np.frombuffer(frame, dtype=np_dtype, count=count, offset=offset).copy()
    t = torch.from_numpy(nd).reshape(shape)
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


def pieces(frame: bytes, size: int = PIECE_BYTES) -> Iterator[bytes]:
    """The gRPC messages that carry `frame`: a flag byte (more, or last) + up to `size` bytes."""
    view = memoryview(frame)
    for start in range(0, max(len(frame), 1), size):
        yield (_LAST if start + size >= len(frame) else _MORE) + view[start : start + size]


def frames(
    received: Iterable[bytes],
    on_piece: Callable[[], None] | None = None,
    max_bytes: int = MAX_FRAME_BYTES,
) -> Iterator[bytes]:
    """Whole frames from received pieces; `on_piece` is called as each piece arrives.

    Stops quietly when the pieces end inside a frame (the stream broke; the caller sees no end
    frame); raises FrameError for a piece without its flag or a frame above `max_bytes`.
    """
    parts: list[bytes] = []
    size = 0
    for piece in received:
        if on_piece is not None:
            on_piece()
        flag = piece[:1]
        if flag not in (_MORE, _LAST):
            raise FrameError(f"a stream piece starts with {flag!r}, not a continuation flag")
        size += len(piece) - 1
        if size > max_bytes:
            raise FrameError(f"a frame above {max_bytes} bytes")
        parts.append(piece[1:])
        if flag == _LAST:
            yield b"".join(parts)
            parts, size = [], 0
