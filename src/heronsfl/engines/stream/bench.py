"""`heronsfl bench stream`: what the per-step stream costs, measured over 127.0.0.1.

Two measurements per payload, each with the client in its own process (as deployed) and the
stream server in this one:

- round trip: a synchronous step as SFLV1/SFLV2/SplitLoRA take it: the client sends one upload
  (activations + labels) and waits for a same-size gradient; timed in the client from `exchange`
  to the decoded answer (both encodings, both transfers, the server's decoding), after 3
  unmeasured warm-up steps. The server only answers: no model runs, so this is the transport.
  For scale, the same bytes also go through a plain TCP socket between the same two processes
  (`tcp_*`: send, receive, no framing, no encoding): the machine's own loopback floor.
- client memory: peak RSS of a client process that produces `uploads` activations one by one and
  either streams them with a window (`stream`) or keeps them all until the end of its round and
  sends them then (`hold`: what a Flower reply makes a client do). Plus the process's RSS
  before its first upload (Python + torch + gRPC), and the most bytes the server held unread.

Payloads are the presets' own (batch x cut at the wire dtype): digits (`demo_cnn_digits`), the
FSL-SAGE reference split (`fsl_sage_resnet18_cifar10`) and the paper's ResNet-18 split
(`heron_sfl_resnet18_cifar10`). With `--tls` the stream runs over TLS with throwaway
certificates (certs.py); the TCP floor stays plain.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from heronsfl.engines.stream.link import Certificates, new_secret

if TYPE_CHECKING:
    import torch

# torch is imported where it is used: the plain-socket client process does not need it.

PAYLOADS = {
    "digits": "demo_cnn_digits",
    "reference": "fsl_sage_resnet18_cifar10",
    "paper": "heron_sfl_resnet18_cifar10",
}
_SECRET_ENV = "HERONSFL_STREAM_SECRET"
_WARMUP = 3


def payload_shape(preset: str) -> tuple[list[int], torch.dtype]:
    """(batch, *cut_shape) and the wire dtype of a preset's activation upload."""
    from heronsfl.algorithms.base import WIRE_DTYPES
    from heronsfl.registry import load_config
    from heronsfl.tasks import build_split_model

    cfg = load_config(preset, ["model.pretrained=false"] if "resnet" in preset else [])
    model = build_split_model(cfg, with_aux=False)
    return [cfg.train.batch_size, *model.cut_shape], WIRE_DTYPES[cfg.comm.wire_dtype]


def _activations(shape: list[int], dtype: torch.dtype, seed: int) -> torch.Tensor:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


def _client_process(args: list[str], timeout_s: float) -> dict[str, Any]:
    """Run this module's client in a fresh interpreter; its last stdout line is JSON."""
    src = str(Path(__file__).resolve().parents[3])
    env = {**os.environ, _SECRET_ENV: args[0], "PYTHONPATH": src}
    cmd = [sys.executable, "-m", "heronsfl.engines.stream.bench", *args[1:]]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    if out.returncode != 0:
        raise RuntimeError(f"bench client failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _serve_round_trips(server: Any, shape: list[int], dtype: torch.dtype) -> None:
    from heronsfl.messages import Download

    gradient = _activations(shape, dtype, seed=1)
    while (got := server.receive(0, 0)) is not None:
        _, step = got
        server.reply(0, 0, Download(0, gradient), step)


def _recv_exactly(sock: socket.socket, buf: bytearray) -> None:
    view, got = memoryview(buf), 0
    while got < len(buf):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("peer closed")
        got += n


def _tcp_answer(listener: socket.socket, steps: int, up_bytes: int, down_bytes: int) -> None:
    listener.settimeout(120)
    conn, _ = listener.accept()
    with conn:
        answer = bytes(down_bytes)
        for _ in range(steps):
            _recv_exactly(conn, bytearray(up_bytes))
            conn.sendall(answer)


def measure(
    name: str,
    steps: int,
    uploads: int,
    window: int,
    certificates: Certificates | None = None,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Round trip and client memory for one payload (see the module docstring)."""
    import threading

    from heronsfl.engines.stream.server import StreamServer

    tls = ["--ca", str(certificates.ca)] if certificates else []

    shape, dtype = payload_shape(PAYLOADS[name])
    secret = new_secret()
    row: dict[str, Any] = {
        "payload": name,
        "preset": PAYLOADS[name],
        "shape": shape,
        "dtype": str(dtype).removeprefix("torch."),
        "upload_bytes": int(np.prod(shape)) * dtype.itemsize + shape[0] * 8,
        "window": window,
        "tls": certificates is not None,
    }
    dims = ",".join(map(str, shape))
    dt = row["dtype"]
    # Round trips.
    with StreamServer(secret, window, timeout_s, certificates=certificates) as server:
        t = threading.Thread(target=_serve_round_trips, args=(server, shape, dtype))
        t.start()
        client = [secret, "client", server.address, "rtt", dims, dt, str(steps + _WARMUP)]
        rtt = _client_process([*client, "--window", str(window), *tls], timeout_s)["rtt_s"]
        rtt = rtt[_WARMUP:]
        t.join(timeout_s)
    row["steps"] = len(rtt)
    row["rtt_median_ms"] = 1e3 * float(np.median(rtt))
    row["rtt_p99_ms"] = 1e3 * float(np.percentile(rtt, 99))
    # The same bytes over a plain socket: up, then the gradient's bytes down.
    up_bytes, down_bytes = row["upload_bytes"], int(np.prod(shape)) * dtype.itemsize
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        echo = threading.Thread(
            target=_tcp_answer, args=(listener, steps + _WARMUP, up_bytes, down_bytes)
        )
        echo.start()
        tcp_args = [str(port), str(up_bytes), str(down_bytes), str(steps + _WARMUP)]
        tcp = _client_process([secret, "tcp", *tcp_args], timeout_s)["rtt_s"][_WARMUP:]
        echo.join(timeout_s)
    row["tcp_median_ms"] = 1e3 * float(np.median(tcp))
    row["tcp_p99_ms"] = 1e3 * float(np.percentile(tcp, 99))
    # Client memory: stream with the window, then hold the whole round.
    for mode in ("stream", "hold"):
        with StreamServer(secret, window, timeout_s, certificates=certificates) as server:
            drain = threading.Thread(target=lambda s=server: list(s.uploads(0, [0])))
            drain.start()
            client = [secret, "client", server.address, mode, dims, dt, str(uploads)]
            got = _client_process([*client, "--window", str(window), *tls], timeout_s)
            drain.join(timeout_s)
            row[f"{mode}_client_peak_rss_bytes"] = got["peak_rss_bytes"]
            row[f"{mode}_client_base_rss_bytes"] = got["base_rss_bytes"]
            row[f"{mode}_server_peak_held_bytes"] = server.peak_held_bytes
    row["uploads"] = uploads
    return row


def run(
    payloads: list[str], steps: int, uploads: int, window: int, tls: bool = False
) -> dict[str, Any]:
    """Measure each payload; with `tls`, over TLS with throwaway certificates (certs.py)."""
    import tempfile

    import torch

    from heronsfl.errors import UserError

    problems = []
    unknown = [p for p in payloads if p not in PAYLOADS]
    if unknown:
        problems.append(f"unknown payload(s) {unknown}; known: {', '.join(PAYLOADS)}")
    if not payloads:
        problems.append(f"no payload given; choose from {', '.join(PAYLOADS)}")
    for name, value in (("--steps", steps), ("--uploads", uploads), ("--window", window)):
        if value < 1:
            problems.append(f"{name} {value}: must be at least 1")
    if problems:
        raise UserError("; ".join(problems))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="heronsfl-certs-") as folder:
        certificates = None
        if tls:
            from heronsfl.engines.stream.certs import local_certificates

            certificates = local_certificates(Path(folder))
        rows = [measure(p, steps, uploads, window, certificates) for p in payloads]
    return {
        "rows": rows,
        "load_avg_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }


def format_table(result: dict[str, Any]) -> str:
    mb = 1e6
    head = (
        f"{'payload':<10}{'upload (MB)':>12}{'RTT median (ms)':>17}{'RTT p99 (ms)':>14}"
        f"{'TCP median (ms)':>17}{'TCP p99 (ms)':>14}"
        f"{'client RSS stream (MB)':>24}{'hold (MB)':>11}{'base (MB)':>11}"
        f"{'server held (MB)':>18}"
    )
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        lines.append(
            f"{r['payload']:<10}{r['upload_bytes'] / mb:>12.3f}{r['rtt_median_ms']:>17.2f}"
            f"{r['rtt_p99_ms']:>14.2f}{r['tcp_median_ms']:>17.2f}{r['tcp_p99_ms']:>14.2f}"
            f"{r['stream_client_peak_rss_bytes'] / mb:>24.1f}"
            f"{r['hold_client_peak_rss_bytes'] / mb:>11.1f}"
            f"{r['stream_client_base_rss_bytes'] / mb:>11.1f}"
            f"{r['stream_server_peak_held_bytes'] / mb:>18.1f}"
        )
    r0 = result["rows"][0]
    lines.append(
        f"{r0['steps']} timed round trips per payload (upload up, same-size gradient down); "
        f"{r0['uploads']} uploads for RSS, window {r0['window']}, "
        f"{'TLS' if r0['tls'] else 'plaintext'}; "
        f"load average {result['load_avg_1m'][0]} -> {result['load_avg_1m'][1]} "
        f"on {result['cpus']} CPUs"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- client process


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _client_main(argv: list[str]) -> None:
    import torch

    from heronsfl.engines.stream.client import StreamClient
    from heronsfl.engines.stream.wire import DTYPES
    from heronsfl.messages import Upload
    from heronsfl.metrics.memory import process_peak_rss_bytes

    p = argparse.ArgumentParser(prog="heronsfl.engines.stream.bench client")
    p.add_argument("address")
    p.add_argument("mode", choices=["rtt", "stream", "hold"])
    p.add_argument("shape")
    p.add_argument("dtype", choices=list(DTYPES))
    p.add_argument("count", type=int)
    p.add_argument("--window", type=int, default=2)
    p.add_argument("--ca", type=Path, default=None, help="root certificate: connect with TLS")
    a = p.parse_args(argv)
    certificates = Certificates(ca=a.ca) if a.ca else None
    shape, dtype = [int(d) for d in a.shape.split(",")], DTYPES[a.dtype]
    labels = torch.zeros(shape[0], dtype=torch.int64)
    secret = os.environ[_SECRET_ENV]
    result: dict[str, Any] = {}
    with StreamClient(a.address, secret, 0, 0, a.window, certificates) as c:
        base = _rss_now()
        if a.mode == "rtt":
            up = Upload(0, _activations(shape, dtype, seed=0), labels)
            rtt = []
            for s in range(a.count):
                t0 = time.perf_counter()
                c.exchange(up, s)
                rtt.append(time.perf_counter() - t0)
            result["rtt_s"] = rtt
        elif a.mode == "stream":  # produce, send (blocks beyond the window), repeat
            for s in range(a.count):
                c.send(Upload(0, _activations(shape, dtype, seed=s), labels), s)
        else:  # hold: the whole round's uploads exist before the first is sent
            held = [Upload(0, _activations(shape, dtype, seed=s), labels) for s in range(a.count)]
            for s, up in enumerate(held):
                c.send(up, s)
            del held
    result["base_rss_bytes"] = base
    result["peak_rss_bytes"] = process_peak_rss_bytes()
    print(json.dumps(result))


def _tcp_main(argv: list[str]) -> None:
    port, up_bytes, down_bytes, steps = (int(v) for v in argv)
    payload, answer, rtt = bytes(up_bytes), bytearray(down_bytes), []
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        for _ in range(steps):
            t0 = time.perf_counter()
            sock.sendall(payload)
            _recv_exactly(sock, answer)
            rtt.append(time.perf_counter() - t0)
    print(json.dumps({"rtt_s": rtt}))


if __name__ == "__main__":
    mains = {"client": _client_main, "tcp": _tcp_main}
    if sys.argv[1:2] == [] or sys.argv[1] not in mains:
        sys.exit("usage: python -m heronsfl.engines.stream.bench client|tcp ...")
    mains[sys.argv[1]](sys.argv[2:])
