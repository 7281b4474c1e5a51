"""`heronsfl report RUN_DIR [RUN_DIR ...] [--out DIR] [--label NAME ...]`: plots and a table.

Reads run directories written by `heronsfl run` (config.toml, metrics.jsonl, summary.json) and
writes into --out (default ./report):
- accuracy_vs_rounds.png: test accuracy per round, one line per run; aux-head accuracy dashed.
- accuracy_vs_comm.png: test accuracy against cumulative uplink + downlink GB, as in the
  HERON-SFL paper's Figures 2-3: algorithms that reach an accuracy with fewer bytes sit left.
- perplexity_vs_comm.png: the same for test perplexity, when a run logs it (language models).
- summary.md: one table row per run.

A run without summary.json did not finish (stopped or failed): it is still reported, marked
"(incomplete)", so a sweep in progress can be looked at. matplotlib is imported inside the
plotting code, never at module level: `import heronsfl.report` stays cheap, and figures are
drawn on `matplotlib.figure.Figure` objects (no pyplot, no global backend state, headless).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heronsfl import files
from heronsfl.errors import UserError
from heronsfl.metrics.log import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE

log = logging.getLogger(__name__)

INCOMPLETE = " (incomplete)"


@dataclass(frozen=True)
class Run:
    """One run directory, read once: per-round records, resolved config, summary if finished."""

    dir: Path
    records: list[dict[str, Any]]
    config: dict[str, Any]
    summary: dict[str, Any] | None

    @property
    def complete(self) -> bool:
        return self.summary is not None

    @property
    def stopped_early(self) -> str | None:
        """Why a finished run ended before its last round (a communication budget), if it did."""
        return (self.summary or {}).get("stopped_early")

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(rounds, values) of the rounds that logged `key` (evaluation may skip rounds)."""
        rows = [(r["round"], r[key]) for r in self.records if key in r]
        return [x for x, _ in rows], [y for _, y in rows]

    def comm_gb(self, key: str) -> tuple[list[float], list[float]]:
        """(cumulative uplink + downlink GB, values) of the rounds that logged `key`."""
        rows = [(_comm_bytes(r) / 1e9, r[key]) for r in self.records if key in r]
        return [x for x, _ in rows], [y for _, y in rows]

    def last(self, key: str) -> Any:
        return next((r[key] for r in reversed(self.records) if key in r), None)

    def best(self, key: str) -> Any:
        return max((r[key] for r in self.records if key in r), default=None)


def _comm_bytes(record: dict[str, Any]) -> int:
    # Both counters are cumulative over the run (see metrics/comm.py), so their sum is the
    # total sent so far in both directions.
    return int(record.get("comm/uplink_bytes", 0)) + int(record.get("comm/downlink_bytes", 0))


# ----------------------------------------------------------------------------- reading


def load_run(run_dir: str | Path) -> Run:
    """Read one run directory; a UserError names what is missing or damaged and what to do."""
    d = Path(run_dir)
    if not d.is_dir():
        raise UserError(f"run directory {str(d)!r} does not exist: give a `heronsfl run --out` dir")
    metrics = d / METRICS_FILE
    if not metrics.is_file():
        raise UserError(f"{d} has no {METRICS_FILE}: is it a run directory (heronsfl run --out)?")
    records = files.read_metrics(metrics)  # a truncated last line is dropped with a warning
    if not records:
        raise UserError(
            f"{metrics} has no rounds: the run stopped before its first round; "
            f"rerun it or leave {d} out"
        )
    config: dict[str, Any] = {}
    if (d / CONFIG_FILE).is_file():
        config = files.read_toml(d / CONFIG_FILE, "run config")
        for key in ("algorithm", "task"):
            if not isinstance(config.get(key, ""), str):
                raise UserError(f"{d / CONFIG_FILE}: {key} = {config[key]!r} is not a string")
        if not isinstance(config.get("rounds", 0), int):
            raise UserError(f"{d / CONFIG_FILE}: rounds = {config['rounds']!r} is not an integer")
    summary = None
    if (d / SUMMARY_FILE).is_file():
        summary = files.read_summary(d / SUMMARY_FILE)
    return Run(d, records, config, summary)


def default_labels(runs: Sequence[Run]) -> list[str]:
    """The algorithm of each run; runs sharing one are told apart by directory name, or path."""
    algos = [
        str(r.config.get("algorithm") or (r.summary or {}).get("algorithm") or r.dir.name)
        for r in runs
    ]
    labels = algos
    for where in (lambda r: r.dir.name, lambda r: str(r.dir)):
        if len(set(labels)) == len(labels):
            break
        labels = [
            f"{a} ({where(r)})" if algos.count(a) > 1 else a
            for a, r in zip(algos, runs, strict=True)
        ]
    return labels


# ----------------------------------------------------------------------------- table

COLUMNS = [
    "run",
    "task",
    "rounds",
    "final test acc",
    "best test acc",
    "final aux acc",
    "total comm GB",
    "client peak mem MB",
    "client MACs/step G",
    "wall s",
    "wall s/round",
    "median round s",
]


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def target_column(target: float) -> str:
    return f"GB to {target:.0%}" if round(target * 100, 6).is_integer() else f"GB to {target:g}"


def gb_to_target(run: Run, target: float) -> float | None:
    """Cumulative uplink + downlink GB when test accuracy first reached `target` (None: never).

    The comparison the SFL papers draw (communication to reach an accuracy), read off the
    per-round records; a run evaluated every few rounds is credited at its first evaluation
    that reaches the target.
    """
    hit = next((r for r in run.records if r.get("test/accuracy", -1.0) >= target), None)
    return None if hit is None else _comm_bytes(hit) / 1e9


def summary_row(run: Run, label: str, targets: Sequence[float] = ()) -> dict[str, str]:
    """One table row: raw metrics formatted for reading (GB = 1e9 B, MB = 1e6 B, G = 1e9)."""
    done = run.records[-1]["round"]
    planned = run.config.get("rounds")
    peak = run.best("client/peak_mem_bytes")
    macs = run.last("client/macs_per_step")
    wall = (run.summary or {}).get("wall_s", run.last("wall_s"))
    row = {
        "run": label + ("" if run.complete else INCOMPLETE),
        "task": str(run.config.get("task") or (run.summary or {}).get("task") or "-"),
        # Unfinished, or finished early (train.max_comm_bytes): rounds done / rounds configured.
        "rounds": str(done) if planned in (None, done) else f"{done}/{planned}",
        "final test acc": _fmt(run.last("test/accuracy"), ".4f"),
        "best test acc": _fmt(run.best("test/accuracy"), ".4f"),
        "final aux acc": _fmt(run.last("aux/accuracy"), ".4f"),
        "total comm GB": _fmt(_comm_bytes(run.records[-1]) / 1e9, ".4g"),
        "client peak mem MB": _fmt(None if peak is None else peak / 1e6, ".4g"),
        "client MACs/step G": _fmt(None if macs is None else macs / 1e9, ".4g"),
        "wall s": _fmt(wall, ".1f"),
        "wall s/round": _fmt(None if wall is None else wall / done, ".1f"),
        # A round stalled by a stop, a resume or a busy machine inflates the mean, not this.
        "median round s": _fmt(_median(run.series("round_s")[1]), ".1f"),
    }
    for t in targets:
        row[target_column(t)] = _fmt(gb_to_target(run, t), ".4g")
    if run.last("test/perplexity") is not None:
        row["final test ppl"] = _fmt(run.last("test/perplexity"), ".3f")
    return row


def format_table(rows: Sequence[dict[str, str]], targets: Sequence[float] = ()) -> str:
    """A markdown table; the perplexity column appears only when some run has one."""
    columns = COLUMNS + [target_column(t) for t in targets]
    columns += ["final test ppl"] if any("final test ppl" in r for r in rows) else []
    widths = [max(len(c), *(len(r.get(c, "-")) for r in rows)) for c in columns]
    # Text columns left-aligned, numbers right-aligned (`---:`), as markdown renders them.
    text = {"run", "task"}
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |",
        "|"
        + "|".join(
            "-" * (w + 2) if c in text else "-" * (w + 1) + ":"
            for c, w in zip(columns, widths, strict=True)
        )
        + "|",
    ]
    for r in rows:
        cells = [
            r.get(c, "-").ljust(w) if c in text else r.get(c, "-").rjust(w)
            for c, w in zip(columns, widths, strict=True)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots


def plot_curves(
    lines: list[tuple[str, list[float], list[float], str, str]],
    xlabel: str,
    ylabel: str,
    path: Path,
    log_y: bool = False,
    integer_x: bool = False,
) -> None:
    """Draw (label, x, y, color, linestyle) lines on one headless figure and save it as PNG."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ModuleNotFoundError:
        raise UserError("heronsfl report needs matplotlib: pip install -e '.[report]'") from None
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.subplots()
    for label, x, y, color, style in lines:
        ax.plot(x, y, color=color, linestyle=style, marker=".", label=label)
    if log_y:
        ax.set_yscale("log")
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)


def write_report(
    runs: Sequence[Run],
    out: str | Path,
    labels: Sequence[str] | None = None,
    targets: Sequence[float] = (),
) -> list[Path]:
    """Write the plots and summary.md for `runs` into `out`; returns the files written.

    `targets`: test accuracies whose "GB to reach" columns the table gets."""
    for t in targets:
        if not 0.0 < t <= 1.0:  # also refuses NaN
            raise UserError(f"--target {t!r} is not an accuracy: give a number in (0, 1]")
    if labels is None:
        labels = default_labels(runs)
    if len(labels) != len(runs):
        raise UserError(
            f"--label gave {len(labels)} names for {len(runs)} runs: "
            "give one per RUN_DIR, in the same order"
        )
    out = files.check_out_dir(out)
    existed = out.is_dir()
    out.mkdir(parents=True, exist_ok=True)
    # Everything is drawn into a scratch folder inside `out` and moved in only once all of it
    # exists: a report that fails half-way leaves `out` as it was, not half a set of figures.
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        names = _draw(runs, labels, tmp, targets)
        for name in names:
            (tmp / name).replace(out / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return [out / name for name in names]


def _draw(
    runs: Sequence[Run], labels: Sequence[str], out: Path, targets: Sequence[float]
) -> list[str]:
    """Write the plots and summary.md into `out`; returns their file names."""
    shown = [lab + ("" if r.complete else INCOMPLETE) for r, lab in zip(runs, labels, strict=True)]
    colors = [f"C{i % 10}" for i in range(len(runs))]  # the run's color in every figure

    by_round: list[tuple[str, list[float], list[float], str, str]] = []
    for run, name, color in zip(runs, shown, colors, strict=True):
        for key, suffix, style in [("test/accuracy", "", "-"), ("aux/accuracy", " aux", "--")]:
            x, y = run.series(key)
            if y:
                by_round.append((name + suffix, list(map(float, x)), y, color, style))
    written = [out / "accuracy_vs_rounds.png", out / "accuracy_vs_comm.png"]
    plot_curves(by_round, "round", "test accuracy (dashed: aux head)", written[0], integer_x=True)

    def vs_comm(key: str) -> list[tuple[str, list[float], list[float], str, str]]:
        series = [(n, *r.comm_gb(key), c, "-") for r, n, c in zip(runs, shown, colors, strict=True)]
        return [s for s in series if s[2]]

    plot_curves(vs_comm("test/accuracy"), "uplink + downlink (GB)", "test accuracy", written[1])
    perplexity = vs_comm("test/perplexity")
    if perplexity:
        written.append(out / "perplexity_vs_comm.png")
        plot_curves(
            perplexity, "uplink + downlink (GB)", "test perplexity", written[-1], log_y=True
        )

    rows = [summary_row(r, lab, targets) for r, lab in zip(runs, labels, strict=True)]
    notes = [
        f"- {name}: `{r.dir}`" + (f" (stopped early: {why})" if (why := r.stopped_early) else "")
        for r, name in zip(runs, shown, strict=True)
    ]
    md = [
        "# Report",
        "",
        format_table(rows, targets),
        "",
        "Accuracies are the global model's on the test set at the final (or best) evaluated",
        "round; `aux` is the client sub-model with its auxiliary head. Comm counts uplink +",
        "downlink payloads at the wire precision (GB = 1e9 bytes, MB = 1e6 bytes). Runs marked",
        "(incomplete) have no summary.json: they were stopped or failed. `wall s/round` is",
        "the run's wall time over its rounds done (a resumed run's time adds up across processes);",
        "`median round s` is the median of its rounds' own times, which one stalled round",
        "(a stop, a resume, a busy machine) does not move.",
        *(
            [
                "`GB to X` is the cumulative comm when test accuracy first reached X",
                "(`-`: not reached in the rounds shown).",
            ]
            if targets
            else []
        ),
        "",
        "Runs:",
        *notes,
    ]
    written.append(out / "summary.md")
    written[-1].write_text("\n".join(md) + "\n")
    return [w.name for w in written]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="heronsfl report", description="Plot and tabulate run directories."
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="directories of `heronsfl run`")
    p.add_argument("--out", default="report", help="where plots and summary.md go (./report)")
    p.add_argument(
        "--label",
        nargs="+",
        action="extend",
        metavar="NAME",
        help="legend and table names, one per RUN_DIR in order (default: the algorithm)",
    )
    p.add_argument(
        "--target",
        nargs="+",
        action="extend",
        type=float,
        default=[],
        metavar="ACC",
        help="test accuracies, e.g. 0.5 0.6: add a 'GB to reach' column for each",
    )
    ns = p.parse_args(argv)
    files.check_out_dir(ns.out)
    runs = [load_run(d) for d in ns.runs]
    written = write_report(runs, ns.out, ns.label, ns.target)
    print(written[-1].read_text(), end="")
    log.info("report written to %s: %s", ns.out, ", ".join(w.name for w in written))
    return 0
