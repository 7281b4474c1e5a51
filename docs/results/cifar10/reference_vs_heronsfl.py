"""Per-round test accuracy of the public FSL-SAGE code next to heronsfl's runs of the same setup.

    python reference_vs_heronsfl.py OUT_PREFIX --pair LABEL HERONSFL_RUN_DIR REFERENCE_LOG ...

Each pair is one algorithm run on both sides: heronsfl's run directory (metrics.jsonl) and the
reference code's own `output.log` (its per-round line `> Round N, ... ts. loss: L, ts. acc: A%,
comm: C GiB.`, written after every round, so a run in progress can be read too). Writes
OUT_PREFIX.md (per-round table, with the wall time between the reference's round lines, and a
summary per pair: mean and mean absolute difference, rounds heronsfl is ahead, bytes) and
OUT_PREFIX.png (accuracy vs rounds, reference dashed). The reference's rounds are 0-based in its
log; they are shown 1-based, like heronsfl's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
from pathlib import Path

from heronsfl.report import load_run, plot_curves

ROUND = re.compile(
    r"^\[(?P<ts>[\d/ :]+), INFO.*> Round (?P<round>\d+),.*ts\. loss: (?P<loss>[\d.]+), "
    r"ts\. acc: (?P<acc>[\d.]+)%(?:, comm: (?P<comm>[\d.]+) GiB)?"
)
START = re.compile(r"^\[(?P<ts>[\d/ :]+), INFO.*# parameters")


def read_reference_log(path: Path) -> list[dict]:
    """One dict per finished round: round (1-based), test accuracy and loss, wall seconds."""
    rows, last = [], None
    for line in path.read_text().splitlines():
        if m := START.match(line):
            last = dt.datetime.strptime(m["ts"], "%d/%m/%y %H:%M:%S")
        elif m := ROUND.match(line):
            ts = dt.datetime.strptime(m["ts"], "%d/%m/%y %H:%M:%S")
            rows.append(
                {
                    "round": int(m["round"]) + 1,
                    "acc": float(m["acc"]) / 100,
                    "loss": float(m["loss"]),
                    "wall_s": (ts - last).total_seconds() if last else None,
                    "comm_gb": float(m["comm"]) * 2**30 / 1e9 if m["comm"] else None,
                }
            )
            last = ts
    return rows


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _summary(diffs: list[float], ours: dict, ref: dict) -> str:
    """How far apart the curves are, over all shared rounds and from round 3 on (the first
    rounds sit on the steepest part of the curve, where one draw moves accuracy most)."""
    ahead = sum(d > 0 for d in diffs)
    text = (
        f"Rounds on both sides: {len(diffs)}; mean difference {_mean(diffs):+.4f}, mean absolute "
        f"{_mean([abs(d) for d in diffs]):.4f}, largest {max(diffs, key=abs):+.4f}; heronsfl "
        f"ahead in {ahead} of {len(diffs)}."
    )
    if len(diffs) > 2:
        late = diffs[2:]
        text += (
            f" From round 3: mean {_mean(late):+.4f}, mean absolute "
            f"{_mean([abs(d) for d in late]):.4f}, heronsfl ahead in {sum(d > 0 for d in late)} "
            f"of {len(late)}."
        )
    last = max(set(ours) & set(ref))
    if ref[last]["comm_gb"] is not None:
        ours_gb = int(ours[last]["comm/uplink_bytes"]) + int(ours[last]["comm/downlink_bytes"])
        text += (
            f" Communication after round {last}: heronsfl {ours_gb / 1e9:.2f} GB, reference "
            f"{ref[last]['comm_gb']:.2f} GB (its log's GiB, to two decimals)."
        )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--pair",
        nargs=3,
        action="append",
        required=True,
        metavar=("LABEL", "HERONSFL_RUN_DIR", "REFERENCE_LOG"),
    )
    args = parser.parse_args()
    out, pairs = args.out, args.pair
    curves, lines = [], []
    for i, (label, run_dir, ref_log) in enumerate(pairs):
        ours = {r["round"]: r for r in load_run(run_dir).records if "test/accuracy" in r}
        ref = {r["round"]: r for r in read_reference_log(Path(ref_log))}
        accs = [r["test/accuracy"] for r in ours.values()]
        curves.append((f"{label}, heronsfl", list(ours), accs, f"C{i}", "-"))
        curves.append(
            (f"{label}, reference code", list(ref), [r["acc"] for r in ref.values()], f"C{i}", "--")
        )
        lines += [
            f"### {label}",
            "",
            "| round | heronsfl test acc | reference test acc | difference | "
            "heronsfl test loss | reference test loss | reference wall s |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        diffs = []
        for n in sorted(set(ours) | set(ref)):
            a, b = ours.get(n), ref.get(n)
            d = a["test/accuracy"] - b["acc"] if a and b else None
            if d is not None:
                diffs.append(d)
            cells = [
                f"{a['test/accuracy']:.4f}" if a else "-",
                f"{b['acc']:.4f}" if b else "-",
                f"{d:+.4f}" if d is not None else "-",
                f"{a['test/loss']:.3f}" if a else "-",
                f"{b['loss']:.3f}" if b else "-",
                f"{b['wall_s']:.0f}" if b and b["wall_s"] is not None else "-",
            ]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        if diffs:
            lines += ["", _summary(diffs, ours, ref)]
        lines.append("")
    plot_curves(curves, "round", "test accuracy", out.with_suffix(".png"), integer_x=True)
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
