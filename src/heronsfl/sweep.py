"""`heronsfl sweep GRID.toml [--out DIR] [--dry-run]`: every combination of a grid, one folder.

A grid file:

    base = "demo_cnn_digits"          # a preset name, or a config file (relative to GRID.toml)
    [grid]                            # each combination of these values is one run
    algorithm = ["heron-sfl", "cse-fsl"]
    "data.alpha" = [0.1, 0.5]
    [fixed]                           # optional: overrides applied to every run
    "data.partition" = "dirichlet"
    rounds = 3

Each run goes to OUT/<key=value,...> (grid keys only, in file order), then `heronsfl report`
runs over all of them into OUT/report. Why the pieces look the way they do:
- Every grid point is built and validated before anything runs, and all problems come back as
  one ConfigError: a typo in the last value should not surface hours into a sweep.
- A run directory that has summary.json is skipped, so rerunning the same command after a kill
  resumes the sweep; an unfinished run is handed to `run_experiment` again, which resumes or
  restarts it. A directory holding a run of a *different* config (the grid was edited) is a
  problem, not a silent skip: its numbers would be reported under the wrong name.
- A run that fails with a user error (a diverged loss, a partition that leaves clients empty)
  does not stop the others; the sweep reports it at the end and exits non-zero.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heronsfl.config import RunConfig
from heronsfl.errors import ConfigError, UserError
from heronsfl.files import check_out_dir, read_toml
from heronsfl.metrics.log import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE
from heronsfl.registry import load_config

log = logging.getLogger(__name__)

TOP_LEVEL_KEYS = ("base", "grid", "fixed")
MAX_NAME_CHARS = 120  # well under the usual 255-byte file-name limit, readable in a legend


@dataclass(frozen=True)
class Grid:
    """A parsed grid file: base config, axes (key, values) in file order, fixed overrides."""

    base: str | None
    axes: list[tuple[str, list[Any]]]
    fixed: dict[str, Any]


@dataclass(frozen=True)
class Point:
    """One run of the sweep."""

    name: str  # directory name under OUT, e.g. "algorithm=cse-fsl,data.alpha=0.5"
    overrides: list[str]  # key=value, grid values then fixed ones
    cfg: RunConfig


# ----------------------------------------------------------------------------- grid file


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"data": {"alpha": x}}` (TOML `data.alpha = x` unquoted) -> `{"data.alpha": x}`."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _text(value: Any) -> str:
    """A TOML scalar as override text; `load_config` casts it back to the field's type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def read_grid(path: str | Path) -> Grid:
    """Parse and check the grid file's shape (values are checked later, by the config)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {str(path)!r} not found")
    try:
        data = read_toml(path, "sweep file")
    except UserError as e:
        raise ConfigError(str(e)) from None
    problems = [
        f"unknown key {key!r} in {path.name}; allowed: {', '.join(TOP_LEVEL_KEYS)}"
        for key in data
        if key not in TOP_LEVEL_KEYS
    ]
    base = data.get("base")
    if base is not None and not isinstance(base, str):
        problems.append(f"base = {base!r} must be a preset name or a config path (a string)")
        base = None
    elif base is not None and (path.parent / base).is_file():
        base = str(path.parent / base)  # a config file beside the grid file
    tables = {}
    for key in ("grid", "fixed"):
        tables[key] = data.get(key, {})
        if not isinstance(tables[key], dict):
            problems.append(f"{key} must be a table ([{key}]), got {tables[key]!r}")
            tables[key] = {}
    grid, fixed = _flatten(tables["grid"]), _flatten(tables["fixed"])
    if not grid:
        problems.append(
            f"{path.name} has no [grid] values: add e.g. algorithm = [...] under [grid]"
        )
    for key, values in grid.items():
        if not isinstance(values, list) or not values or not all(map(_scalar, values)):
            problems.append(f"grid.{key} = {values!r} must be a non-empty list of values")
    for key, value in fixed.items():
        if not _scalar(value):
            problems.append(f"fixed.{key} = {value!r} must be a single value")
        if key in grid:
            problems.append(f"{key!r} is in both [grid] and [fixed]: keep one")
    if problems:
        raise ConfigError(problems)
    return Grid(base, list(grid.items()), fixed)


def _dir_name(assignment: Sequence[tuple[str, Any]]) -> str:
    name = ",".join(f"{key}={_text(value)}" for key, value in assignment)
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)  # safe on every file system and shell
    if len(name) > MAX_NAME_CHARS:  # keep it unique: a checksum of the full name
        name = f"{name[: MAX_NAME_CHARS - 9]}-{zlib.crc32(name.encode()):08x}"
    return name


# ----------------------------------------------------------------------------- planning


def _differs(run_dir: Path, cfg: RunConfig) -> bool:
    """Whether run_dir already holds a run of a config other than `cfg`."""
    if not (run_dir / CONFIG_FILE).is_file():
        return False
    try:
        return load_config(run_dir / CONFIG_FILE) != cfg
    except ConfigError:  # damaged, or written by an older heronsfl with keys now gone
        return True


def plan(grid: Grid, out: Path) -> list[Point]:
    """Every grid point with its validated config; one ConfigError lists every problem."""
    keys = [key for key, _ in grid.axes]
    fixed = [f"{key}={_text(value)}" for key, value in grid.fixed.items()]
    assignments = [
        list(zip(keys, values, strict=True))
        for values in itertools.product(*(values for _, values in grid.axes))
    ]
    names = [_dir_name(a) for a in assignments]
    points: list[Point] = []
    where: dict[str, list[str]] = {}  # problem -> the runs that have it
    stale: list[str] = []
    for name, assignment in zip(names, assignments, strict=True):
        overrides = [f"{key}={_text(value)}" for key, value in assignment] + fixed
        try:
            cfg = load_config(grid.base, overrides)
        except ConfigError as e:
            for problem in e.problems:
                where.setdefault(problem, []).append(name)
            continue
        if _differs(out / name, cfg):
            stale.append(
                f"{out / name} holds a run of another config (was the grid edited?): "
                "delete it or choose another --out"
            )
        points.append(Point(name, overrides, cfg))
    problems = [
        p if len(runs) == len(names) else f"{p} (in {_few(runs)})" for p, runs in where.items()
    ]
    problems += stale
    problems += [
        f"grid points share the directory {n!r}" for n in sorted(set(names)) if names.count(n) > 1
    ]
    if problems:
        raise ConfigError(problems)
    return points


def _few(names: list[str], show: int = 3) -> str:
    more = f" and {len(names) - show} more" if len(names) > show else ""
    return ", ".join(names[:show]) + more


# ----------------------------------------------------------------------------- running


def run_sweep(grid_path: str | Path, out: str | Path, dry_run: bool = False) -> list[Point]:
    """Validate every point, run those without summary.json, then report them all."""
    # Imported here: the runner pulls in torch and the models; --dry-run and errors stay fast.
    from heronsfl.report import load_run, write_report
    from heronsfl.runner import run_experiment

    out = Path(out)
    points = plan(read_grid(grid_path), out)
    done = {p.name for p in points if (out / p.name / SUMMARY_FILE).is_file()}
    if dry_run:
        for p in points:
            print(f"{'done' if p.name in done else 'todo'}  {out / p.name}")
        print(f"{len(points)} runs: {len(done)} done, {len(points) - len(done)} to run")
        return points

    failed: list[str] = []
    for i, p in enumerate(points, 1):
        if p.name in done:
            log.info("[%d/%d] %s: done before, skipped", i, len(points), p.name)
            continue
        log.info("[%d/%d] %s", i, len(points), p.name)
        try:
            summary = run_experiment(p.cfg, out / p.name)
        except UserError as e:  # this point's fault (diverged, data); the others still run
            log.error("[%d/%d] %s failed: %s", i, len(points), p.name, e)
            failed.append(f"{p.name}: {str(e).splitlines()[0]}")
            continue
        acc = summary["final"].get("test/accuracy")
        log.info("[%d/%d] %s: test accuracy %s", i, len(points), p.name, _fmt_acc(acc))

    # Report every run that logged at least one round, finished or not.
    runs = [p for p in points if (out / p.name / METRICS_FILE).is_file()]
    loaded = []
    for p in runs:
        try:
            loaded.append((load_run(out / p.name), p.name))
        except UserError as e:  # e.g. failed before its first round: nothing to plot
            log.warning("not in the report: %s", e)
    if loaded:
        write_report([r for r, _ in loaded], out / "report", [n for _, n in loaded])
        log.info("report: %s", out / "report")
    if failed:
        raise UserError(f"{len(failed)} of {len(points)} runs failed: {'; '.join(failed)}")
    return points


def _fmt_acc(acc: float | None) -> str:
    return "n/a" if acc is None else f"{acc:.4f}"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="heronsfl sweep", description="Run every combination of a grid into one folder."
    )
    p.add_argument("grid", metavar="GRID.toml", help="base, [grid] and optional [fixed] tables")
    p.add_argument("--out", help="where the runs and report/ go (default: sweeps/<GRID name>)")
    p.add_argument("--dry-run", action="store_true", help="list the runs, run nothing")
    ns = p.parse_args(argv)
    out = ns.out or str(Path("sweeps") / Path(ns.grid).stem)
    check_out_dir(out)
    run_sweep(ns.grid, out, dry_run=ns.dry_run)
    return 0
