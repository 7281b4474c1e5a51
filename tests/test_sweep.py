"""Tests for heronsfl.sweep: a 2x2 grid of tiny digits runs, resuming, and up-front validation."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from heronsfl import cli, sweep
from heronsfl.errors import ConfigError, UserError
from tests.conftest import TINY

NAMES = [
    "algorithm=heron-sfl,data.alpha=0.5",
    "algorithm=heron-sfl,data.alpha=10000.0",
    "algorithm=cse-fsl,data.alpha=0.5",
    "algorithm=cse-fsl,data.alpha=10000.0",
]


def _grid_file(tmp_path: Path, grid: str, fixed: dict[str, str] | None = None) -> Path:
    """A grid file whose [fixed] table is the tiny test config (1 round, 2 steps) plus `fixed`."""
    quick = {"rounds": "1", "train.local_steps": "2"}
    table = dict(item.split("=", 1) for item in TINY) | quick | (fixed or {})
    lines = [f'"{key}" = {json.dumps(value)}' for key, value in table.items()]
    path = tmp_path / "grid.toml"
    path.write_text(grid + "\n[fixed]\n" + "\n".join(lines) + "\n")
    return path


GRID = """
[grid]
algorithm = ["heron-sfl", "cse-fsl"]
"data.alpha" = [0.5, 1e4]
"""


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records the directory of every run_experiment call, and still runs it."""
    from heronsfl.runner import run_experiment

    seen: list[str] = []

    def spy(cfg: Any, out_dir: Path, **kw: Any) -> dict[str, Any]:
        seen.append(Path(out_dir).name)
        return run_experiment(cfg, out_dir, **kw)

    monkeypatch.setattr("heronsfl.runner.run_experiment", spy)
    return seen


def test_sweep_runs_every_point_resumes_and_reports(tmp_path: Path, calls: list[str]) -> None:
    # Prepare
    grid = _grid_file(tmp_path, GRID, {"data.partition": "dirichlet-equal"})
    out = tmp_path / "out"
    # Execute
    assert sweep.main([str(grid), "--out", str(out)]) == 0
    # Assert: one run per combination, first axis slowest, each with its values
    assert calls == NAMES
    for name in NAMES:
        assert (out / name / "summary.json").is_file()
        cfg = tomllib.loads((out / name / "config.toml").read_text())
        assert f"algorithm={cfg['algorithm']}" in name and f"alpha={cfg['data']['alpha']}" in name
        assert cfg["data"]["partition"] == "dirichlet-equal" and cfg["rounds"] == 1
    table = (out / "report" / "summary.md").read_text()
    assert all(f"| {name} " in table for name in NAMES)
    assert (out / "report" / "accuracy_vs_comm.png").stat().st_size > 10_000

    # A second invocation runs nothing; one lost summary.json reruns only that point.
    calls.clear()
    assert sweep.main([str(grid), "--out", str(out)]) == 0
    assert calls == []
    (out / NAMES[2] / "summary.json").unlink()
    assert sweep.main([str(grid), "--out", str(out)]) == 0
    assert calls == [NAMES[2]]


def test_every_invalid_value_is_reported_before_anything_runs(
    tmp_path: Path, calls: list[str]
) -> None:
    grid = _grid_file(
        tmp_path,
        '[grid]\nalgorithm = ["heron-sfl", "nope"]\n"data.alpha" = [0.5, -1.0]\n',
        {"data.partiton": "iid"},
    )
    with pytest.raises(ConfigError) as info:
        sweep.main([str(grid), "--out", str(tmp_path / "out")])
    problems = info.value.problems
    assert any(
        p.startswith("unknown algorithm 'nope'") and "(in algorithm=nope," in p for p in problems
    )
    assert any(p.startswith("data.alpha = -1.0 must be > 0 (in ") for p in problems)
    # A problem every point has is listed once, without the list of points.
    assert "unknown config key 'data.partiton'; did you mean 'partition'?" in problems
    assert calls == [] and not (tmp_path / "out").exists()


def test_grid_file_shape_problems_come_together(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('bse = "x"\n[grid]\nrounds = 3\nseed = []\n[fixed]\nrounds = 2\n')
    with pytest.raises(ConfigError) as info:
        sweep.read_grid(path)
    text = str(info.value)
    assert "unknown key 'bse'" in text
    assert "grid.rounds = 3 must be a non-empty list" in text
    assert "grid.seed = [] must be a non-empty list" in text
    assert "'rounds' is in both [grid] and [fixed]" in text


def test_dotted_keys_may_be_quoted_or_nested(tmp_path: Path) -> None:
    quoted = sweep.read_grid(_grid_file(tmp_path, '[grid]\n"data.alpha" = [0.1]\n'))
    nested = sweep.read_grid(_grid_file(tmp_path, "[grid]\ndata.alpha = [0.1]\n"))
    assert quoted == nested and quoted.axes == [("data.alpha", [0.1])]


def test_dry_run_lists_runs_and_runs_nothing(
    tmp_path: Path, calls: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    grid = _grid_file(tmp_path, GRID)
    assert cli.main(["sweep", str(grid), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert all(f"todo  {tmp_path / 'out' / name}" in printed for name in NAMES)
    assert "4 runs: 0 done, 4 to run" in printed
    assert calls == [] and not (tmp_path / "out").exists()


def test_a_run_dir_of_another_config_is_a_problem_not_a_skip(tmp_path: Path) -> None:
    out = tmp_path / "out"
    grid = _grid_file(tmp_path, '[grid]\nalgorithm = ["cse-fsl"]\n')
    sweep.main([str(grid), "--out", str(out)])
    grid = _grid_file(tmp_path, '[grid]\nalgorithm = ["cse-fsl"]\n', {"seed": "1"})
    with pytest.raises(ConfigError, match="holds a run of another config"):
        sweep.main([str(grid), "--out", str(out)])


def test_a_failing_point_does_not_stop_the_others(tmp_path: Path, calls: list[str]) -> None:
    # 60 samples cannot make 3 clients x 30 shards: a DataError when the first point's first
    # round partitions the data; the second point still runs.
    grid = _grid_file(
        tmp_path,
        '[grid]\n"data.shards_per_client" = [30, 2]\n',
        {"data.partition": "shards", "data.train_subset": "60"},
    )
    with pytest.raises(UserError, match=r"1 of 2 runs failed: data.shards_per_client=30: shards"):
        sweep.main([str(grid), "--out", str(tmp_path / "out")])
    assert calls == ["data.shards_per_client=30", "data.shards_per_client=2"]
    assert (tmp_path / "out" / "data.shards_per_client=2" / "summary.json").is_file()
    assert "| data.shards_per_client=2 " in (tmp_path / "out" / "report" / "summary.md").read_text()


def test_example_grid_is_valid() -> None:
    example = Path(__file__).parents[1] / "examples" / "sweep_dirichlet_digits.toml"
    points = sweep.plan(sweep.read_grid(example), Path("unused"))
    assert len(points) == 6 and all(p.cfg.data.partition == "dirichlet" for p in points)


def test_cifar10_grids_are_valid_and_share_one_setup() -> None:
    # The CIFAR-10 runs of docs/results/cifar10.md: every grid of examples/cifar10_sweeps.sh
    # must plan, and all runs must share the preset's split, data and schedule.
    examples = Path(__file__).parents[1] / "examples"
    script = (examples / "cifar10_sweeps.sh").read_text()
    grids = [
        p for p in sorted(examples.glob("cifar10_*.toml")) if p.stem[len("cifar10_") :] in script
    ]
    assert len(grids) == 4
    points = [p for g in grids for p in sweep.plan(sweep.read_grid(g), Path("unused"))]
    assert len(points) == 11
    setups = {
        (p.cfg.model.cut, p.cfg.model.stem, p.cfg.train, p.cfg.data, p.cfg.clients, p.cfg.rounds)
        for p in points
    }
    assert len(setups) == 1
