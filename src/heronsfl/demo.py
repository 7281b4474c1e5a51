"""`heronsfl demo`: HERON-SFL next to the first-order baselines on bundled data, offline.

Runs the `demo_cnn_digits` preset (scikit-learn's bundled 8x8 digits, 5 clients) once per
algorithm, each into its own run directory, and prints one comparison table: accuracy,
communication, client peak memory and client compute per local step.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from heronsfl.registry import load_config
from heronsfl.runner import run_experiment

log = logging.getLogger(__name__)

DEMO_PRESET = "demo_cnn_digits"
DEMO_ALGORITHMS = ("heron-sfl", "cse-fsl", "sflv2")


def format_comparison(rows: list[dict[str, Any]]) -> str:
    head = (
        f"| {'algorithm':<10} | {'test acc':>8} | {'aux acc':>7} | {'uplink MB':>9} | "
        f"{'downlink MB':>11} | {'client peak mem KB':>18} | {'client MACs/step (M)':>20} | "
        f"{'time s':>6} |"
    )
    sep = "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"
    lines = [head, sep]
    for r in rows:
        f = r["final"]
        aux = f.get("aux/accuracy")
        lines.append(
            f"| {r['algorithm']:<10} | {f['test/accuracy']:>8.4f} | "
            f"{'-' if aux is None else f'{aux:.4f}':>7} | {f['comm/uplink_bytes'] / 1e6:>9.2f} | "
            f"{f['comm/downlink_bytes'] / 1e6:>11.2f} | "
            f"{f['client/peak_mem_bytes'] / 1e3:>18.1f} | "
            f"{f['client/macs_per_step'] / 1e6:>20.3f} | {r['wall_s']:>6.1f} |"
        )
    return "\n".join(lines)


def run_demo(out: Path, rounds: int | None = None, quiet: bool = False) -> list[dict[str, Any]]:
    overrides = [] if rounds is None else [f"rounds={rounds}"]
    rows = []
    for name in DEMO_ALGORITHMS:
        cfg = load_config(DEMO_PRESET, [f"algorithm={name}", *overrides])
        if not quiet:
            log.info(
                "demo: %s on %s, %d rounds, %d clients", name, cfg.task, cfg.rounds, cfg.clients
            )
        rows.append(run_experiment(cfg, out / name, overwrite=True))
    table = format_comparison(rows)
    (out / "comparison.md").write_text(table + "\n")
    print(table)
    if not quiet:
        log.info("runs and comparison.md in %s", out)
    return rows
