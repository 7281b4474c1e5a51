"""Tests for heronsfl.report: synthetic run directories with known numbers, one real tiny run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from heronsfl import cli
from heronsfl.errors import UserError
from heronsfl.report import load_run, main, write_report
from heronsfl.runner import run_experiment
from tests.conftest import tiny_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _record(rnd: int, acc: float | None, aux: float | None = None, **extra: Any) -> dict[str, Any]:
    """A metrics.jsonl record: 1 GB up and 0.5 GB down per round (cumulative), like the engine."""
    r: dict[str, Any] = {"round": rnd}
    if acc is not None:
        r["test/accuracy"] = acc
    if aux is not None:
        r["aux/accuracy"] = aux
    r |= {
        "comm/uplink_bytes": rnd * 1_000_000_000,
        "comm/downlink_bytes": rnd * 500_000_000,
        "client/peak_mem_bytes": 2_500_000,
        "client/macs_per_step": 39.9e9,
        "wall_s": 4.0 * rnd,
    }
    return r | extra


def _write_run(
    d: Path, algorithm: str, records: list[dict[str, Any]], rounds: int, complete: bool = True
) -> Path:
    d.mkdir(parents=True)
    (d / "config.toml").write_text(
        f'algorithm = "{algorithm}"\ntask = "resnet18-cifar10"\nrounds = {rounds}\n'
    )
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if complete:
        summary = {"algorithm": algorithm, "rounds": len(records), "wall_s": 12.34}
        (d / "summary.json").write_text(json.dumps(summary))
    return d


def _table(md: str) -> dict[str, dict[str, str]]:
    """summary.md's table as {run label: {column: cell}}."""
    lines = [line for line in md.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    return {row[0]: dict(zip(head, row, strict=True)) for row in rows}


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 10_000  # axes, lines and a legend, not an empty canvas
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 400 and im.size[1] > 300


@pytest.fixture
def two_runs(tmp_path: Path) -> list[Path]:
    heron = _write_run(
        tmp_path / "heron",
        "heron-sfl",
        [
            _record(1, 0.5, 0.3, round_s=3.0),
            _record(2, 0.8, 0.4, round_s=4.0),
            _record(3, 0.7, 0.45, round_s=40.0),
        ],
        rounds=3,
    )
    sflv2 = _write_run(
        tmp_path / "sflv2", "sflv2", [_record(1, 0.6), _record(2, 0.65)], rounds=5, complete=False
    )
    return [heron, sflv2]


def test_report_writes_plots_and_a_table_with_the_runs_numbers(
    two_runs: list[Path], tmp_path: Path
) -> None:
    # Execute
    out = tmp_path / "report"
    assert main([*map(str, two_runs), "--out", str(out)]) == 0
    # Assert
    for name in ["accuracy_vs_rounds.png", "accuracy_vs_comm.png"]:
        _assert_png(out / name)
    assert not (out / "perplexity_vs_comm.png").exists()
    table = _table((out / "summary.md").read_text())
    assert table["heron-sfl"] == {
        "run": "heron-sfl",
        "task": "resnet18-cifar10",
        "rounds": "3",
        "final test acc": "0.7000",
        "best test acc": "0.8000",
        "final aux acc": "0.4500",
        "total comm GB": "4.5",
        "client peak mem MB": "2.5",
        "client MACs/step G": "39.9",
        "wall s": "12.3",  # from summary.json
        "wall s/round": "4.1",
        "median round s": "4.0",  # round_s 3, 4 and 40: the stalled round does not count
    }
    inc = table["sflv2 (incomplete)"]
    assert inc["rounds"] == "2/5" and inc["final aux acc"] == "-"
    assert inc["total comm GB"] == "3" and inc["wall s"] == "8.0"  # from the last record
    assert inc["median round s"] == "-"  # its records carry no round_s


def test_perplexity_plot_and_column_appear_when_a_run_logs_perplexity(tmp_path: Path) -> None:
    lm = _write_run(
        tmp_path / "lm",
        "heron-sfl",
        [_record(1, 0.2, **{"test/perplexity": 40.0}), _record(2, 0.3, **{"test/perplexity": 20})],
        rounds=2,
    )
    written = write_report([load_run(lm)], tmp_path / "out")
    assert tmp_path / "out" / "perplexity_vs_comm.png" in written
    _assert_png(tmp_path / "out" / "perplexity_vs_comm.png")
    assert _table((tmp_path / "out" / "summary.md").read_text())["heron-sfl"]["final test ppl"] == (
        "20.000"
    )


def test_a_run_stopped_by_its_budget_shows_rounds_done_of_configured(tmp_path: Path) -> None:
    d = _write_run(tmp_path / "run", "heron-sfl", [_record(1, 0.5), _record(2, 0.6)], rounds=10)
    summary = json.loads((d / "summary.json").read_text())
    summary["stopped_early"] = "communication budget: 4500000000 >= train.max_comm_bytes"
    (d / "summary.json").write_text(json.dumps(summary))
    write_report([load_run(d)], tmp_path / "out")
    md = (tmp_path / "out" / "summary.md").read_text()
    assert _table(md)["heron-sfl"]["rounds"] == "2/10"
    assert "(stopped early: communication budget: 4500000000 >= train.max_comm_bytes)" in md


def test_labels_name_the_algorithm_and_the_directory_when_shared(tmp_path: Path) -> None:
    runs = [
        _write_run(tmp_path / "a", "heron-sfl", [_record(1, 0.5)], rounds=1),
        _write_run(tmp_path / "b", "heron-sfl", [_record(1, 0.6)], rounds=1),
        _write_run(tmp_path / "c", "cse-fsl", [_record(1, 0.7)], rounds=1),
    ]
    write_report([load_run(d) for d in runs], tmp_path / "out")
    table = _table((tmp_path / "out" / "summary.md").read_text())
    assert list(table) == ["heron-sfl (a)", "heron-sfl (b)", "cse-fsl"]
    assert table["heron-sfl (b)"]["final test acc"] == "0.6000"


def test_target_columns_give_the_comm_when_accuracy_first_reached_each_target(
    two_runs: list[Path], tmp_path: Path
) -> None:
    # Execute: heron reaches 0.6 at round 2 (3 GB), sflv2 at round 1 (1.5 GB); nobody 0.9
    out = tmp_path / "out"
    assert main([*map(str, two_runs), "--out", str(out), "--target", "0.6", "0.9"]) == 0
    # Assert
    table = _table((out / "summary.md").read_text())
    assert table["heron-sfl"]["GB to 60%"] == "3"
    assert table["sflv2 (incomplete)"]["GB to 60%"] == "1.5"
    assert table["heron-sfl"]["GB to 90%"] == table["sflv2 (incomplete)"]["GB to 90%"] == "-"


@pytest.mark.parametrize("bad", ["0", "1.5", "nan", "-0.2"])
def test_a_target_that_is_not_an_accuracy_is_refused_before_writing(
    bad: str, two_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    rc = cli.main(["report", *map(str, two_runs), "--out", str(out), "--target", bad])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("heronsfl: error: --target") and "(0, 1]" in err
    assert not out.exists()


def test_label_option_names_runs_in_order_and_must_match_their_count(
    two_runs: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    main([*map(str, two_runs), "--out", str(out), "--label", "ZO", "FO"])
    assert list(_table((out / "summary.md").read_text())) == ["ZO", "FO (incomplete)"]
    with pytest.raises(UserError, match="--label gave 1 names for 2 runs"):
        main([*map(str, two_runs), "--out", str(out), "--label", "ZO"])


def test_missing_dir_and_empty_metrics_end_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    cases = [
        (tmp_path / "nope", "does not exist"),
        (tmp_path, "has no metrics.jsonl"),
        (empty, "has no rounds"),
    ]
    for path, message in cases:
        # Execute
        rc = cli.main(["report", str(path), "--out", str(tmp_path / "out")])
        # Assert
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith("heronsfl: error: ") and message in err
        assert len(err.splitlines()) == 1


def test_a_truncated_last_line_of_a_killed_run_is_ignored(tmp_path: Path) -> None:
    d = _write_run(tmp_path / "run", "heron-sfl", [_record(1, 0.5)], rounds=4, complete=False)
    with open(d / "metrics.jsonl", "a") as fh:
        fh.write('{"round": 2, "test/acc')
    run = load_run(d)
    assert len(run.records) == 1 and not run.complete


def test_import_does_not_load_matplotlib() -> None:
    code = "import sys, heronsfl.report; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_report_of_a_real_tiny_run_matches_its_summary(tmp_path: Path) -> None:
    summary = run_experiment(tiny_config(), tmp_path / "run")
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    row = _table((tmp_path / "out" / "summary.md").read_text())["heron-sfl"]
    final = summary["final"]
    assert row["rounds"] == "2" and row["task"] == "cnn-digits"
    assert row["final test acc"] == f"{final['test/accuracy']:.4f}"
    assert row["best test acc"] == f"{summary['best_test_accuracy']:.4f}"
    assert row["final aux acc"] == f"{final['aux/accuracy']:.4f}"
    comm = (final["comm/uplink_bytes"] + final["comm/downlink_bytes"]) / 1e9
    assert row["total comm GB"] == f"{comm:.4g}"
    _assert_png(tmp_path / "out" / "accuracy_vs_comm.png")
