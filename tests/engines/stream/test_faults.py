"""Faults at the transport, with real client processes: killed and stalled clients are dropped
and named, the others' uploads all arrive, and the server never waits past its timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from heronsfl.engines.stream.link import new_secret
from heronsfl.engines.stream.server import StreamServer

ROOT = Path(__file__).resolve().parents[3]
SECRET = new_secret()


def _client(address: str, cid: int, steps: int, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "HERONSFL_STREAM_SECRET": SECRET}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "tests.engines.stream.stream_client", address, str(cid)]
    return subprocess.Popen(
        [*cmd, str(steps), *extra], env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )


def _wait_for_line(proc: subprocess.Popen[str], prefix: str) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:  # bounded by the process: it prints or exits
        if line.startswith(prefix):
            return
    raise AssertionError(f"client exited ({proc.wait()}) before printing {prefix!r}")


def test_a_client_killed_mid_stream_is_dropped_and_the_others_finish() -> None:
    with StreamServer(SECRET, window=2, timeout_s=20) as server:
        victim = _client(server.address, 0, 50, "--pause-s", "0.05")
        other = _client(server.address, 1, 6, "--pause-s", "0.05")
        try:
            _wait_for_line(victim, "sent 0")
            got = []
            start = time.monotonic()
            for cid, step, _ in server.uploads(0, [0, 1]):
                got.append((cid, step))
                if (cid, step) == (0, 2):
                    victim.send_signal(signal.SIGKILL)  # mid-stream, no goodbye
                    victim.wait(timeout=10)
            elapsed = time.monotonic() - start
            assert other.wait(timeout=30) == 0
        finally:
            for p in (victim, other):
                p.kill()
                p.wait()

    # The killed client is named with the cause; well under the 20 s timeout: a broken
    # connection is noticed at once, not waited out.
    assert list(server.dropped[0]) == [0]
    assert "broken" in server.dropped[0][0]
    assert [s for c, s in got if c == 1] == list(range(6))
    assert (0, 2) in got and len([s for c, s in got if c == 0]) < 50
    assert elapsed < 15


def test_a_stalled_client_is_dropped_after_the_timeout_and_the_others_finish() -> None:
    timeout_s = 1.5
    with StreamServer(SECRET, window=2, timeout_s=timeout_s) as server:
        stalled = _client(server.address, 0, 5, "--stall-after", "2")
        other = _client(server.address, 1, 4)
        try:
            _wait_for_line(stalled, "stalling")
            _wait_for_line(other, "sent 0")
            start = time.monotonic()
            got = [(cid, step) for cid, step, _ in server.uploads(0, [0, 1])]
            elapsed = time.monotonic() - start
            assert other.wait(timeout=30) == 0
        finally:
            stalled.kill()
            other.kill()
            stalled.wait()
            other.wait()

    assert server.dropped == {0: {0: f"nothing received for {timeout_s:g} s (stalled)"}}
    assert got == [(0, 0), (1, 0), (0, 1), (1, 1), (1, 2), (1, 3)]
    assert timeout_s <= elapsed < timeout_s + 5


def test_a_client_that_never_connects_is_dropped_and_named() -> None:
    with StreamServer(SECRET, timeout_s=0.5) as server:
        start = time.monotonic()
        got = list(server.uploads(3, [7]))
        elapsed = time.monotonic() - start

    assert got == []
    assert server.dropped == {3: {7: "did not open its stream within 0.5 s"}}
    assert elapsed < 3
