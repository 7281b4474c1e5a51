"""Real deployment: a SuperLink and SuperNodes as separate processes on 127.0.0.1.

Each test starts its own daemons on free ports with a temporary FLWR_HOME, bounds every wait,
and ends every process it started (LocalFederation closes them even when a test fails).
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from heronsfl.engines.flower import deploy
from heronsfl.engines.flower.deploy import LocalFederation, descendants, write_app
from heronsfl.engines.flower.protocol import DeployError, DeployOptions
from heronsfl.engines.simulation import Simulation
from heronsfl.metrics.log import read_metrics
from tests.conftest import TINY, tiny_config
from tests.engines.flower.conftest import algorithm_records

pytestmark = pytest.mark.flower

OVERRIDES = [*TINY, "clients=2", "rounds=2", "algorithm=heron-sfl"]


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def _rounds_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _runs_client_app(pid: int) -> bool:
    for child in descendants(pid):
        try:
            if b"flwr-clientapp" in Path(f"/proc/{child}/cmdline").read_bytes():
                return True
        except OSError:
            pass
    return False


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    """One SuperLink and two SuperNodes, shared by the runs below (each its own Flower run)."""
    with LocalFederation(tmp_path_factory.mktemp("federation"), clients=2) as fed:
        yield fed


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_deploy_local_killed_server_resumes_with_the_same_command(tmp_path: Path) -> None:
    # Prepare: `heronsfl deploy local` on 127.0.0.1, 2 rounds of HERON-SFL, 2 SuperNodes.
    out = tmp_path / "run"
    args = ["local", *OVERRIDES, "--out", str(out), "--round-timeout", "120", "--timeout", "300"]
    before = set(descendants(os.getpid()))
    failed: list[BaseException] = []

    def first_attempt() -> None:
        try:
            deploy.main([*args, "-q"])
        except BaseException as e:  # noqa: BLE001 - inspected below
            failed.append(e)

    runner = threading.Thread(target=first_attempt, daemon=True)
    runner.start()
    # Execute: once round 1 is checkpointed and a client trains round 2, SIGKILL the server side
    # (the SuperLink and the ServerApp below it), as when the server's machine dies. A round is
    # done when its checkpoint is written, just after its metrics line (a kill between the two
    # runs that round again, by design); a fresh run writes its first checkpoint after round 1.
    assert wait_until((out / "checkpoint.pt").exists, 250), "round 1 never finished"
    mine = lambda: set(descendants(os.getpid())) - before  # noqa: E731
    assert wait_until(lambda: any(b"flwr-clientapp" in _cmdline(p) for p in mine()), 60)
    [superlink] = [p for p in mine() if b"flower-superlink" in _cmdline(p)]
    server_side = [superlink, *descendants(superlink)]
    assert any(b"flwr-serverapp" in _cmdline(p) for p in server_side)
    for pid in server_side:
        os.kill(pid, signal.SIGKILL)
    runner.join(timeout=200)
    assert not runner.is_alive(), "the deploy hung after its server was killed"
    # The attempt failed with one clear line that says how to go on, and kept round 1 only.
    [error] = failed
    assert isinstance(error, DeployError) and "resumes from the last checkpoint" in str(error)
    assert _rounds_logged(out) == 1 and not (out / "summary.json").exists()
    round_1 = (out / "metrics.jsonl").read_text()
    # The same command again: it picks up after round 1 and runs round 2 only.
    assert deploy.main([*args, "-q"]) == 0
    assert (out / "metrics.jsonl").read_text().startswith(round_1)
    log = (out / "flower" / "flwr-run.log").read_text()
    assert re.search(r"resuming \S+ after round 1\b", log), log[-2000:]
    # Assert: the final global model is the in-process simulator's for the same seed.
    sim = Simulation(tiny_config(*OVERRIDES[len(TINY) :]))
    expected = sim.run()
    assert_final_model(out, sim)
    records = read_metrics(out)
    assert algorithm_records(records) == algorithm_records(expected)
    assert [r["deploy/clients"] for r in records] == [[0, 1], [0, 1]]
    # Each process measured its own peak: a Python process with torch holds well over 50 MB.
    assert all(len(r["deploy/client_peak_rss_mb"]) == 2 for r in records)
    assert all(50 < mb < 4096 for r in records for mb in r["deploy/client_peak_rss_mb"])
    assert all(50 < r["deploy/server_peak_rss_mb"] < 8192 for r in records)
    # The uploads went on the stream, the models on Flower, each a little above its payload.
    last = records[-1]
    steps = last["comm/up_activations_bytes"] + last["comm/up_labels_bytes"]
    assert steps < last["stream/uplink_bytes"] < 1.01 * steps
    assert last["comm/up_model_bytes"] < last["flower/uplink_bytes"]
    # (the tiny model's 8 tensors cost Flower ~450 B each; test_server.py bounds it exactly)
    assert last["flower/uplink_bytes"] < 2 * last["comm/up_model_bytes"]
    # Every daemon and helper of both attempts is gone.
    assert set(descendants(os.getpid())) - before == set()


@pytest.mark.parametrize(
    "overrides",
    [
        ("algorithm=heron-sfl", "zo.exchange=seeds", "train.server_order=client-by-client"),
        ("algorithm=sflv2",),
        ("algorithm=ho-sfl", "zo.num_probes=2"),
    ],
)
def test_deployed_runs_end_with_the_simulators_model(
    federation: LocalFederation, tmp_path: Path, overrides: tuple[str, ...]
) -> None:
    # Prepare: one round (two rounds, and the model exchange between them: the test above).
    cfg = tiny_config("clients=2", "rounds=1", *overrides)
    out = tmp_path / "run"
    app_dir = tmp_path / "app"
    write_app(app_dir, cfg, DeployOptions(out=str(out), round_timeout_s=120.0))
    # Execute: one Flower run on the shared SuperLink and SuperNodes.
    assert federation.run_app(app_dir, 240, echo=False) == 0
    # Assert
    sim = Simulation(cfg)
    expected = sim.run()
    records = read_metrics(out)
    assert sorted(records[0]["deploy/clients"]) == [0, 1]
    if cfg.algorithm == "ho-sfl":  # equal up to the rounding the simulator's shared probes leave
        final = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
        for key, _ in sim.model.client.named_parameters():
            got, want = final["global_state"][f"client.{key}"], sim.global_state[f"client.{key}"]
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)
        assert records[-1]["deploy/step_round_trip_median_ms"] > 0
        return
    assert_final_model(out, sim)
    assert algorithm_records(records) == algorithm_records(expected)
    if cfg.algorithm == "sflv2":  # one answer per local step, measured by the clients
        last = records[-1]
        assert last["deploy/step_round_trip_median_ms"] > last["deploy/server_step_median_ms"] > 0


def assert_final_model(out: Path, sim: Simulation) -> None:
    final = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert final["round"] == sim.round
    assert final["global_state"].keys() == sim.global_state.keys()
    for key, value in sim.global_state.items():
        assert torch.equal(final["global_state"][key], value), key
    server = sim.model.server.state_dict()
    for key, value in final["server_model"].items():
        assert torch.equal(value, server[key]), key


def test_a_supernode_killed_mid_round_is_dropped_and_the_run_completes(tmp_path: Path) -> None:
    # Prepare
    cfg = tiny_config(*OVERRIDES[len(TINY) :])
    out = tmp_path / "run"
    opts = DeployOptions(out=str(out), round_timeout_s=150.0, connect_timeout_s=60.0)
    status: dict[str, int] = {}
    # Processes already running below pytest (another test's module-scoped federation) are
    # not this test's to account for: only what this federation started must be gone.
    before = set(descendants(os.getpid()))
    with LocalFederation(tmp_path, cfg.clients) as fed:
        app_dir = fed.home / "app"
        write_app(app_dir, cfg, opts)
        runner = threading.Thread(
            target=lambda: status.update(rc=fed.run_app(app_dir, 400, echo=False)), daemon=True
        )
        runner.start()
        # Execute: once round 1 is done, kill client 1's SuperNode while it trains round 2.
        assert wait_until(lambda: _rounds_logged(out) >= 1, 250), "round 1 never finished"
        wait_until(lambda: _runs_client_app(fed.supernodes[1].pid), 30)
        fed.kill_supernode(1)
        runner.join(timeout=300)
        assert not runner.is_alive(), "the run hung"
    # Assert: round 2 went on without client 1, and the run finished.
    records = read_metrics(out)
    assert [r["deploy/dropped_clients"] for r in records] == [[], [1]]
    assert [r["deploy/clients"] for r in records] == [[0, 1], [0]]
    assert (out / "summary.json").exists()
    assert status["rc"] == 0
    log = (tmp_path / "flower" / "flwr-run.log").read_text()
    assert "no reply from client(s) [1]" in log
    # Dropped when its stream broke, or when Flower reported its node gone if it was killed
    # before it opened the stream: either way well before the round timeout.
    assert "round 2: client 1 dropped: " in log
    assert records[1]["deploy/exchange_s"] < opts.round_timeout_s
    assert set(descendants(os.getpid())) - before == set()
