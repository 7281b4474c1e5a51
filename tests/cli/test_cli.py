from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from heronsfl.cli import main
from heronsfl.registry import load_config
from tests.conftest import TINY


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_writes_config_metrics_and_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code, _, err = _run(
        capsys, "run", *TINY, "algorithm=cse-fsl", "--out", str(tmp_path / "r"), "-q"
    )
    # Assert
    assert code == 0, err
    run = tmp_path / "r"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    for key in [
        "round",
        "test/accuracy",
        "test/loss",
        "comm/uplink_bytes",
        "comm/downlink_bytes",
        "client/peak_mem_bytes",
        "client/macs_per_step",
        "wall_s",
        "aux/accuracy",
    ]:
        assert key in records[-1], key
    assert records[1]["comm/uplink_bytes"] > records[0]["comm/uplink_bytes"]  # cumulative
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["final"] == records[-1]
    # The written config is complete and loads back to the same config.
    with open(run / "config.toml", "rb") as fh:
        assert tomllib.load(fh)["algorithm"] == "cse-fsl"
    assert load_config(run / "config.toml") == load_config(None, [*TINY, "algorithm=cse-fsl"])


def test_run_refuses_to_overwrite_a_completed_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["run", *TINY, "rounds=1", "--out", str(tmp_path), "-q"]
    assert _run(capsys, *args)[0] == 0
    code, _, err = _run(capsys, *args)
    assert code == 2 and "--overwrite" in err
    assert _run(capsys, *args, "--overwrite")[0] == 0


BAD_INPUT = [
    (["algorithm=nope"], "unknown algorithm 'nope'; known: cse-fsl, fedavg, fsl-sage, heron-sfl"),
    (["task=mnist-vit"], "unknown task 'mnist-vit'"),
    (["train.batch_sise=4"], "did you mean 'batch_size'"),
    (["train.batch_size=0"], "train.batch_size = 0 must be > 0"),
    (["train.upload_every=9", "train.local_steps=3"], "set k <= h"),
    (["model.cut=layer9"], "model.cut = 'layer9' does not exist"),
    (["zo.estimator=two-sided"], "zo.estimator = 'two-sided' is not one of"),
    (["rounds=two"], "rounds = 'two' must be an integer"),
    (["device=cuda"] if not __import__("torch").cuda.is_available() else ["device=tpu"], "device"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_INPUT)
def test_bad_input_is_one_clear_line_and_leaves_no_summary(
    overrides: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "run", *TINY, *overrides, "--out", str(tmp_path / "r"), "-q")
    assert code == 2
    assert message in err
    assert err.startswith("heronsfl: error:") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "summary.json").exists()


def test_missing_data_offline_names_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(
        capsys,
        "run",
        "task=resnet18-cifar10",
        f"data.root={tmp_path / 'nowhere'}",
        "rounds=1",
        "--out",
        str(tmp_path / "r"),
        "-q",
    )
    assert code == 2 and "data.root" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "summary.json").exists()


def test_corrupt_data_file_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "cifar10").mkdir()
    for split in ("train", "test"):
        (tmp_path / "cifar10" / f"{split}.zip").write_bytes(b"not a zip at all" * 100)
    code, _, err = _run(
        capsys,
        "run",
        "task=resnet18-cifar10",
        f"data.root={tmp_path}",
        "rounds=1",
        "--out",
        str(tmp_path / "r"),
        "-q",
    )
    assert code == 2 and "cifar10/test.zip" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "summary.json").exists()


def test_nan_loss_stops_the_run_without_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(
        capsys,
        "run",
        *TINY,
        "algorithm=cse-fsl",
        "client_optim.name=sgd",
        "client_optim.lr=1e30",
        "--out",
        str(tmp_path / "r"),
        "-q",
    )
    assert code == 2 and "loss is" in err and "client_optim.lr" in err
    assert len(err.strip().splitlines()) == 1
    # A NaN in round 1: nothing was logged, so --out is left as it was found (absent).
    assert not (tmp_path / "r").exists()


def test_validate_reports_every_problem_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('algorithm = "nope"\nrounds = 0\n[train]\nbatch_size = -1\nlocal_step = 3\n')
    code, _, err = _run(capsys, "validate", str(cfg))
    assert code == 2
    for fragment in [
        "unknown algorithm",
        "rounds = 0",
        "train.batch_size = -1",
        "'train.local_step'",
    ]:
        assert fragment in err
    assert "4 config problems" in err


def test_validate_accepts_every_shipped_preset(capsys: pytest.CaptureFixture[str]) -> None:
    from heronsfl.config import presets

    assert presets(), "configs/ ships presets"
    for path in presets().values():
        code, out, err = _run(capsys, "validate", str(path))
        assert code == 0, err
        assert "ok" in out


def test_ls_lists_registries(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "ls")
    assert code == 0
    for name in ["heron-sfl", "sflv2", "cse-fsl", "resnet18-cifar10", "cnn-digits", "iid"]:
        assert name in out
    code, out, _ = _run(capsys, "ls", "--keys")
    assert "zo.mu = 0.001" in out and "train.upload_every" in out


@pytest.mark.parametrize("command", ["report", "sweep", "deploy"])
def test_passthrough_commands_show_their_own_help(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert f"heronsfl {command}" in capsys.readouterr().out
