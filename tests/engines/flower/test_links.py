"""Emulated links: real network namespaces, veth pairs and `tc` shaping, real processes.

Needs root and iproute2 (`ip`, `tc`); without them the tests that build links are skipped with
the reason (CI runs as root). The flag checks run everywhere.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from heronsfl.engines.flower import deploy, links
from heronsfl.engines.flower.links import EmulatedLinks
from heronsfl.engines.simulation import Simulation
from heronsfl.errors import UserError
from heronsfl.metrics.log import read_metrics
from tests.cli.test_bad_input import assert_clean_error, cli
from tests.conftest import TINY, tiny_config
from tests.engines.flower.conftest import algorithm_records

ROOT = Path(__file__).resolve().parents[3]


def _unavailable() -> str | None:
    try:
        links.check_available()
    except UserError as e:
        return str(e)
    return None


needs_links = pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable()))

# A peer in a namespace: sends N bytes to host:port, or receives until EOF and prints the
# seconds from its first byte to EOF. Plain Python, no heronsfl: it starts in ~0.1 s.
_PEER = """
import socket, sys, time
mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if mode == "send":
    with socket.create_connection((host, port), timeout=30) as c:
        c.sendall(b"x" * n)
else:
    with socket.create_server((host, port)) as s:
        print("listening", flush=True)
        c, _ = s.accept()
        got = len(c.recv(1 << 16)); t0 = time.monotonic()
        while (b := c.recv(1 << 16)):
            got += len(b)
        print(got, time.monotonic() - t0, flush=True)
"""


def _upload_s(net: EmulatedLinks, nbytes: int) -> float:
    """Client 0 sends `nbytes` to the host; seconds from the first byte to EOF at the host."""
    with socket.create_server((net.host, 0)) as server:
        port = server.getsockname()[1]
        peer = subprocess.Popen(
            net.wrap(0, [sys.executable, "-c", _PEER, "send", net.host, str(port), str(nbytes)])
        )
        server.settimeout(30)
        conn, _ = server.accept()
        with conn:
            got = len(conn.recv(1 << 16))
            t0 = time.monotonic()
            while chunk := conn.recv(1 << 16):
                got += len(chunk)
            elapsed = time.monotonic() - t0
    assert peer.wait(timeout=30) == 0
    assert got == nbytes
    return elapsed


def _download_s(net: EmulatedLinks, nbytes: int) -> float:
    """The host sends `nbytes` to client 0; seconds from the first byte to EOF at the client."""
    addr, port = net.client_address(0), 47000
    cmd = net.wrap(0, [sys.executable, "-c", _PEER, "recv", addr, str(port), str(nbytes)])
    peer = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert peer.stdout is not None
    assert peer.stdout.readline().strip() == "listening"
    with socket.create_connection((addr, port), timeout=30) as conn:
        conn.sendall(b"x" * nbytes)
    out, _ = peer.communicate(timeout=60)
    got, elapsed = out.split()
    assert int(got) == nbytes
    return float(elapsed)


def _leftovers(tag: str) -> list[str]:
    """Namespaces and interfaces of the links tagged `tag` that still exist."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    ifaces = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return [line for line in (names + ifaces).splitlines() if tag in line]


@needs_links
def test_each_direction_is_limited_to_its_rate_and_unshaped_is_much_faster() -> None:
    # Prepare: 2 MB through links of 16 Mbit/s up and 8 Mbit/s down: at least 1 s and 2 s.
    nbytes = 2_000_000
    with EmulatedLinks(1, uplink_mbit=16, downlink_mbit=8) as shaped:
        # Execute
        up, down = _upload_s(shaped, nbytes), _download_s(shaped, nbytes)
    with EmulatedLinks(1, uplink_mbit=None, downlink_mbit=None) as unshaped:
        free_up, free_down = _upload_s(unshaped, nbytes), _download_s(unshaped, nbytes)
    # Assert: at the rate (htb lets a burst of a few KB through at once), never far below it,
    # while the same namespaces without shaping move it many times faster.
    expected_up, expected_down = nbytes * 8 / 16e6, nbytes * 8 / 8e6
    assert 0.9 * expected_up <= up <= 3 * expected_up, up
    assert 0.9 * expected_down <= down <= 3 * expected_down, down
    assert free_up < expected_up / 4 and free_down < expected_down / 4, (free_up, free_down)


@needs_links
def test_teardown_removes_everything_also_on_an_error() -> None:
    # Execute: an error inside the block, after the links were up.
    net = EmulatedLinks(2, uplink_mbit=10, downlink_mbit=None)
    with pytest.raises(RuntimeError, match="boom"), net:
        assert len(_leftovers(net.tag)) == 2 + 3  # 2 namespaces; bridge + 2 veth host ends
        raise RuntimeError("boom")
    # Assert
    assert _leftovers(net.tag) == []


@needs_links
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_teardown_on_ctrl_c_and_sigterm(sig: str) -> None:
    # Prepare: a process that builds links, says their tag, and waits.
    code = (
        "import sys, time\n"
        "from heronsfl.engines.flower.links import EmulatedLinks\n"
        "with EmulatedLinks(2, 5.0, 12.5) as net:\n"
        "    print(net.tag, flush=True)\n"
        "    time.sleep(60)\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, text=True
    )
    assert proc.stdout is not None
    tag = proc.stdout.readline().strip()
    assert len(_leftovers(tag)) == 5, tag
    # Execute
    proc.send_signal(getattr(__import__("signal"), sig))
    proc.wait(timeout=30)
    # Assert: interrupted, and nothing left.
    assert proc.returncode != 0
    assert _leftovers(tag) == []


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "1e9"])
@pytest.mark.parametrize("flag", ["--uplink-mbit", "--downlink-mbit"])
def test_bad_rates_are_refused_before_anything_runs(tmp_path: Path, flag: str, value: str) -> None:
    code, err = cli("deploy", "local", *TINY, flag, value, "--out", str(tmp_path / "d"))
    assert_clean_error(code, err, flag)
    assert not (tmp_path / "d").exists()


def test_not_root_or_no_iproute2_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = str(tmp_path / "d")
    monkeypatch.setattr(links.os, "geteuid", lambda: 1000)
    code, err = cli("deploy", "local", *TINY, "--uplink-mbit", "5", "--out", out)
    assert "needs root" in assert_clean_error(code, err, "--uplink-mbit")
    monkeypatch.setattr(links.os, "geteuid", lambda: 0)
    monkeypatch.setattr(links.shutil, "which", lambda name: None if name == "tc" else "/bin/ip")
    code, err = cli("deploy", "local", *TINY, "--downlink-mbit", "5", "--out", out)
    assert "need tc (iproute2)" in assert_clean_error(code, err, "--downlink-mbit")
    assert not (tmp_path / "d").exists()


def _sent_bytes(report: str, link: str) -> int:
    """'Sent N bytes' of one link end in the links report."""
    m = re.search(rf"# {link}: .*\n.*\n Sent (\d+) bytes", report)
    assert m is not None, (link, report)
    return int(m.group(1))


@needs_links
@pytest.mark.flower
def test_a_shaped_deploy_ends_with_the_simulators_model(tmp_path: Path) -> None:
    # Execute: `heronsfl deploy local` with every SuperNode in its own namespace, shaped.
    overrides = [*TINY, "clients=2", "rounds=1", "algorithm=heron-sfl"]
    out = tmp_path / "run"
    flags = ["--uplink-mbit", "20", "--downlink-mbit", "50", "--round-timeout", "120", "-q"]
    assert deploy.main(["local", *overrides, *flags, "--timeout", "300", "--out", str(out)]) == 0
    # Assert: the same final model as the simulator (which the unshaped deploy also equals).
    sim = Simulation(tiny_config(*overrides[len(TINY) :]))
    expected = sim.run()
    final = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    for key, value in sim.global_state.items():
        torch.testing.assert_close(final["global_state"][key], value, msg=key)
    records = read_metrics(out)
    assert algorithm_records(records) == algorithm_records(expected)
    assert records[-1]["deploy/clients"] == [0, 1]
    # Each client's Flower bytes went through its own shaped link, and the links are gone.
    report = (out / "flower" / "links.txt").read_text()
    flower_up = records[-1]["flower/uplink_bytes"]
    assert _sent_bytes(report, "client 0 uplink") + _sent_bytes(report, "client 1 uplink") > (
        flower_up
    )
    tag = re.search(r"namespaces heronsfl-(\w+)-0", report)
    assert tag is not None, report
    assert _leftovers(tag.group(1)) == []
    assert deploy.descendants(os.getpid()) == []
