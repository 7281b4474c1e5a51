"""Focused regressions, one per class of bad input (the property test generalises them)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from heronsfl.algorithms import ALGORITHMS
from heronsfl.cli import allocation_failure, announce_cost, main
from heronsfl.config import RunConfig
from heronsfl.engines.simulation import Simulation
from heronsfl.progress import LogProgress, RoundProgress
from heronsfl.registry import load_config, with_overrides
from heronsfl.registry import problems as validate
from heronsfl.runner import run_experiment
from heronsfl.tasks import TASKS
from tests.cli.test_bad_input import RUN, assert_clean_error, cli, snapshot
from tests.conftest import TINY

# ----------------------------------------------------------------------------- resume


class _Stop(Exception):
    pass


def _unfinished_run(out: Path) -> None:
    """A RUN killed after its first round: checkpoint and one metrics line, no summary."""

    def stop(record: dict) -> None:
        raise _Stop

    with pytest.raises(_Stop):
        run_experiment(load_config(None, RUN), out, on_round=stop)


@pytest.mark.parametrize("tail", [b'{"round": 2, "test/acc', b'{"round": 2, "x": "\xe2\x82'])
def test_resume_drops_a_truncated_last_line_and_finishes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, tail: bytes
) -> None:
    # Prepare: killed while writing round 2's line (no newline; possibly mid UTF-8 character).
    out = tmp_path / "run"
    _unfinished_run(out)
    with open(out / "metrics.jsonl", "ab") as f:
        f.write(tail)
    # Execute
    with caplog.at_level(logging.WARNING):
        code, err = cli("run", *RUN, "--out", str(out), "-q")
    # Assert: the checkpoint (round 1) is trusted, the torn line dropped and said so.
    assert code == 0, err
    assert "dropped a truncated last line" in caplog.text
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2]
    assert (out / "summary.json").exists()


def test_resume_drops_a_line_logged_after_the_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "run"
    _unfinished_run(out)
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"round": 2, "test/accuracy": 0.5}) + "\n")
    with caplog.at_level(logging.WARNING):
        code, err = cli("run", *RUN, "--out", str(out), "-q")
    assert code == 0, err
    assert "round(s) 2" in caplog.text
    assert (out / "summary.json").exists()


def test_resume_with_metrics_missing_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _unfinished_run(out)
    (out / "metrics.jsonl").unlink()
    code, err = cli("run", *RUN, "--out", str(out), "-q")
    assert_clean_error(code, err, "metrics.jsonl")
    assert "--overwrite" in err and not (out / "summary.json").exists()


def test_resume_with_a_checkpoint_of_the_wrong_shapes_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _unfinished_run(out)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["server_model"] = {"nonsense": torch.zeros(3)}
    torch.save(state, out / "checkpoint.pt")
    code, err = cli("run", *RUN, "--out", str(out), "-q")
    assert_clean_error(code, err, "checkpoint.pt")


# ----------------------------------------------------------------------------- --out


@pytest.mark.parametrize(
    "argv",
    [
        ["run", *TINY, "--out", "{out}"],
        ["demo", "--out", "{out}"],
        ["report", "{run}", "--out", "{out}"],
        ["sweep", "{grid}", "--out", "{out}"],
        ["deploy", "local", *TINY, "--out", "{out}"],
        ["deploy", "partition", *TINY, "--out-dir", "{out}"],
    ],
    ids=["run", "demo", "report", "sweep", "deploy-local", "deploy-partition"],
)
@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_out_that_cannot_be_a_folder_is_refused_first(
    tmp_path: Path, argv: list[str], where: str
) -> None:
    # Prepare
    blocker = tmp_path / "taken"
    blocker.write_text("mine\n")
    out = blocker if where == "a file" else blocker / "sub"
    grid = tmp_path / "grid.toml"
    grid.write_text('base = "demo_cnn_digits"\n[grid]\nalgorithm = ["heron-sfl"]\n')
    run = tmp_path / "run"
    run.mkdir()
    fill = {"{out}": str(out), "{run}": str(run), "{grid}": str(grid)}
    # Execute
    code, err = cli(*[fill.get(a, a) for a in argv])
    # Assert
    assert_clean_error(code, err, str(blocker))
    assert blocker.read_text() == "mine\n"


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("algorithm=splitlora", "splitlora"),
        ("client_optim.momentum=nan", "client_optim.momentum"),
        ("server_optim.momentum=inf", "server_optim.momentum"),
        ("server_optim.weight_decay=inf", "server_optim.weight_decay"),
        ("client_optim.weight_decay=nan", "client_optim.weight_decay"),
        ("model.aux_blocks=-5", "model.aux_blocks"),
        ("zo.mu=1e300", "zo.mu"),
        ("zo.num_probes=1000000000", "zo.num_probes"),
        ("train.local_steps=1000000000", "train.local_steps"),
        ("model.width=1000000", "model.width"),
        ("seed=99999999999999999999999", "seed"),
        ("a=b.toml", "a=b.toml"),
    ],
)
def test_validation_refuses_what_used_to_run(override: str, key: str) -> None:
    code, err = cli("validate", "demo_cnn_digits", override)
    assert_clean_error(code, err, key)


def test_inf_weight_decay_names_weight_decay_not_the_lr() -> None:
    code, err = cli("validate", "demo_cnn_digits", "server_optim.weight_decay=inf")
    assert "weight_decay" in err and "lr" not in err.replace("weight_decay", "")


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_algorithms_run_only_on_tasks_that_provide_what_they_need(algorithm: str) -> None:
    for task, spec in TASKS.items():
        cfg = RunConfig(algorithm=algorithm, task=task)
        problems = [p for p in validate(cfg) if "needs a task" in p]
        assert bool(problems) != (ALGORITHMS[algorithm].requires <= spec.provides), (task, problems)


# ----------------------------------------------------------------------------- bench flags


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--task", "nope"], "--task"),
        (["--upload-every", "0"], "--upload-every"),
        (["--upload-every", "-3"], "--upload-every"),
        (["--local-steps", "0"], "--local-steps"),
        (["--local-steps", "-1"], "--local-steps"),
        (["--local-steps", "4", "--upload-every", "5"], "--upload-every"),
        (["--batch-size", "0"], "--batch-size"),
        (["--batch-size", "1000000000"], "--batch-size"),
        (["--algorithms", ",,,"], "--algorithms"),
        (["--algorithms", "heron-sfl,nope"], "nope"),
        (["zo.mu=1e300"], "zo.mu"),
    ],
)
def test_bench_flags_are_checked_before_anything_runs(flags: list[str], named: str) -> None:
    code, err = cli("bench", "resources", "--task", "cnn-digits", *flags)
    assert_clean_error(code, err, named)


@pytest.mark.parametrize("port", ["-1", "99999"])
def test_deploy_port_out_of_range(tmp_path: Path, port: str) -> None:
    code, err = cli("deploy", "local", *TINY, "--port", port, "--out", str(tmp_path / "d"))
    assert_clean_error(code, err, "--port")
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------- left behind


@pytest.mark.parametrize(
    "overrides",
    [
        ["task=resnet18-cifar10", "data.root=/nonexistent-heronsfl-data"],
        ["clients=5000"],  # more clients than the digits training set has samples for
    ],
    ids=["data-root", "too-many-clients"],
)
def test_a_failed_start_leaves_out_as_it_found_it(tmp_path: Path, overrides: list[str]) -> None:
    fresh = tmp_path / "fresh"
    code, err = cli("run", *TINY, *overrides, "--out", str(fresh), "-q")
    assert_clean_error(code, err, "")
    assert not fresh.exists()
    # A folder that already held something keeps exactly that.
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("keep\n")
    before = snapshot(used)
    code, err = cli("run", *TINY, *overrides, "--out", str(used), "-q")
    assert code == 2 and snapshot(used) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_leaves_nothing(tmp_path: Path) -> None:
    code, err = cli("run", *TINY, "device=cuda", "--out", str(tmp_path / "r"), "-q")
    assert_clean_error(code, err, "device")
    assert not (tmp_path / "r").exists()


def test_a_report_that_fails_while_drawing_writes_no_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a real run, and a plotter that fails on the second figure.
    import heronsfl.report as report

    run = tmp_path / "run"
    assert cli("run", *RUN, "--out", str(run), "-q")[0] == 0
    real, calls = report.plot_curves, []

    def second_fails(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise report.UserError("drawing failed")
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(report, "plot_curves", second_fails)
    # Execute
    code, err = cli("report", str(run), "--out", str(tmp_path / "rep"))
    # Assert
    assert_clean_error(code, err, "drawing failed")
    assert len(calls) == 2 and not (tmp_path / "rep").exists()


# ----------------------------------------------------------------------------- top level


def test_a_closed_pipe_ends_quietly(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    class ClosedPipe:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    code = main(["ls"])
    assert code == 141
    assert capsys.readouterr().err == ""


def test_allocation_failures_name_the_size_tried() -> None:
    # Real allocator failures: 2**45 bytes (35 TB) is more than any machine running this.
    with pytest.raises(RuntimeError) as torch_err:
        torch.empty(2**45, dtype=torch.uint8)
    with pytest.raises(MemoryError) as numpy_err:
        np.empty(2**45, dtype=np.uint8)
    assert "35,184.4 GB" in (allocation_failure(torch_err.value) or "")
    assert "32.0 TiB" in (allocation_failure(numpy_err.value) or "")
    assert allocation_failure(RuntimeError("a shape mismatch")) is None


def test_an_allocation_failure_mid_command_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def allocate(*args: object, **kwargs: object) -> None:
        torch.empty(2**45, dtype=torch.uint8)

    monkeypatch.setattr("heronsfl.bench.resources", allocate)
    code, err = cli("bench", "resources", "--task", "cnn-digits")
    assert_clean_error(code, err, "tried to allocate 35,184.4 GB")


# ----------------------------------------------------------------------------- progress


class Recorder(RoundProgress):
    def __init__(self) -> None:
        super().__init__()
        self.ends: list[tuple[int, int, int, int]] = []

    def end(self) -> None:
        self.ends.append((self.steps, self.total_steps, self.clients_done, self.server_steps))


@pytest.mark.parametrize(
    ("algorithm", "server_steps"),
    [("heron-sfl", 3 * 6 // 2), ("sflv2", 3 * 6)],
)
def test_progress_counts_a_rounds_work(algorithm: str, server_steps: int) -> None:
    sim = Simulation(with_overrides(RunConfig(), [*TINY, f"algorithm={algorithm}"]))
    sim.progress = rec = Recorder()
    sim.run_round()
    # 3 clients x 6 local steps; a decoupled server steps once per upload (every 2nd step).
    assert rec.ends == [(18, 18, 3, server_steps)]


def test_log_progress_prints_a_plain_line(caplog: pytest.LogCaptureFixture) -> None:
    p = LogProgress(every_s=0.0)
    p.start(3, clients=2, local_steps=5)
    with caplog.at_level(logging.INFO, logger="heronsfl"):
        p.client_step()
    assert "round 3: local steps 1/10, clients 0/2, server steps 0" in caplog.text


def test_a_huge_round_is_announced_before_it_starts(caplog: pytest.LogCaptureFixture) -> None:
    cfg = with_overrides(RunConfig(), [*TINY, "train.local_steps=90000", "zo.num_probes=8"])
    with caplog.at_level(logging.WARNING, logger="heronsfl"):
        announce_cost(cfg)
    assert "3 clients x 90000 local steps = 270,000 client steps of 8 ZO probes" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="heronsfl"):
        announce_cost(with_overrides(RunConfig(), TINY))
    assert caplog.text == ""
