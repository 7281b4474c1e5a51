from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import TINY

TIMING = {"wall_s", "round_s"}


def _command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "heronsfl.cli", "run", *TINY, *extra, "--out", str(out), "-q"]


def _metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def test_a_killed_run_resumes_to_the_same_final_metrics(tmp_path: Path) -> None:
    # Prepare: the reference, uninterrupted.
    args = ("rounds=30", "algorithm=heron-sfl")
    env = {**os.environ, "CI": "1"}
    subprocess.run(_command(tmp_path / "ref", *args), check=True, env=env, timeout=120)
    # Execute: kill -9 once two rounds are logged, then give the same command again.
    run = tmp_path / "run"
    proc = subprocess.Popen(_command(run, *args), env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        path = run / "metrics.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= 2:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (run / "summary.json").exists(), "the run finished before it could be killed"
    killed_after = len(_metrics(run))
    subprocess.run(_command(run, *args), check=True, env=env, timeout=120)
    # Assert
    assert 2 <= killed_after < 30
    assert _metrics(run) == _metrics(tmp_path / "ref")
    assert (run / "summary.json").exists()


def test_resume_refuses_a_different_config(tmp_path: Path) -> None:
    from heronsfl.errors import UserError
    from heronsfl.metrics.log import RunWriter
    from heronsfl.registry import load_config

    cfg = load_config(None, [*TINY, "rounds=3"])
    writer = RunWriter(tmp_path, cfg)
    writer.save_checkpoint({"round": 0})
    writer.close()
    try:
        RunWriter(tmp_path, load_config(None, [*TINY, "rounds=4"]))
    except UserError as e:
        assert "--overwrite" in str(e)
    else:
        raise AssertionError("a different config must not resume silently")


def test_communication_budget_stops_the_run(tmp_path: Path) -> None:
    from heronsfl.registry import load_config
    from heronsfl.runner import run_experiment

    summary = run_experiment(
        load_config(None, [*TINY, "rounds=10", "train.max_comm_bytes=1"]), tmp_path
    )
    assert summary["rounds"] == 1 and "budget" in summary["stopped_early"]
