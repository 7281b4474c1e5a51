"""Tables of docs/results/wallclock.md from the runs' records: python tables.py [RUNS_DIR]."""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
RATES = {"up5": (5, 12.5), "up20": (20, 50), "up100": (100, 250), "loopback": None}
ALGOS = {
    "heron-sfl": "heron-sfl",
    "heron_sfl": "heron-sfl",
    "cse-fsl": "cse-fsl",
    "cse_fsl": "cse-fsl",
    "sflv2": "sflv2",
}


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def load_range(name: str) -> str:
    """1-minute load average while the run ran (from chain.log and loadavg.txt)."""
    chain = (HERE / "chain.log").read_text().splitlines()
    starts = [
        i for i, line in enumerate(chain) if line == f"== {name}" or line.startswith(f"== {name} ")
    ]
    if not starts:
        return ""
    i = starts[-1]
    if i + 1 >= len(chain):
        return ""
    t0, t1 = chain[i].split()[-1], chain[i + 1].split()[-1]
    loads = [
        float(line.split()[1])
        for line in (HERE / "loadavg.txt").read_text().splitlines()
        if t0 <= line.split()[0] <= t1
    ]
    return f"{min(loads):.1f}-{max(loads):.1f}" if loads else ""


def link_s(r: dict, prev: dict | None, clients: int, rates: tuple[float, float] | None) -> str:
    """One client's round on its link: its stream + Flower bytes at the link's rates."""
    if rates is None:
        return "-"

    def per_round(key: str) -> float:
        return (r[key] - (prev[key] if prev else 0)) / clients

    up = per_round("stream/uplink_bytes") + per_round("flower/uplink_bytes")
    down = per_round("stream/downlink_bytes") + per_round("flower/downlink_bytes")
    return f"{up * 8 / (rates[0] * 1e6) + down * 8 / (rates[1] * 1e6):.1f}"


def table(prefix: str) -> str:
    rows = [
        "| algorithm | uplink / downlink (Mbit/s) | round | `round_s` | link, one client "
        "| test acc | step round trip median / p99 (ms) | server step median (ms) "
        "| client / server peak RSS (MB) | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for algo in ("heron-sfl", "cse-fsl", "sflv2"):
        for link, rates in RATES.items():
            for run in sorted(HERE.glob(f"{prefix}-*")):
                name = run.name[len(prefix) + 1 :]
                if prefix == "rss" and link == "loopback":  # 127.0.0.1 only, no link suffix
                    name += f"-{link}"
                if not name.endswith(f"-{link}") or ALGOS.get(name[: -len(link) - 1]) != algo:
                    continue
                if not (run / "summary.json").exists():
                    continue
                recs = records(run)
                clients = len(recs[0]["deploy/clients"])
                label = "127.0.0.1" if rates is None else f"{rates[0]:g} / {rates[1]:g}"
                for j, r in enumerate(recs):
                    rtt = ""
                    if "deploy/step_round_trip_median_ms" in r:
                        rtt = (
                            f"{r['deploy/step_round_trip_median_ms']:.1f} / "
                            f"{r['deploy/step_round_trip_p99_ms']:.1f}"
                        )
                    step = (
                        f"{r['deploy/server_step_median_ms']:.1f}"
                        if "deploy/server_step_median_ms" in r
                        else ""
                    )
                    rss = (
                        f"{max(r['deploy/client_peak_rss_mb']):.0f} / "
                        f"{r['deploy/server_peak_rss_mb']:.0f}"
                    )
                    rows.append(
                        f"| {algo} | {label} | {r['round']} | {r['round_s']:.1f} "
                        f"| {link_s(r, recs[j - 1] if j else None, clients, rates)} "
                        f"| {r['test/accuracy']:.4f} | {rtt} | {step} | {rss} "
                        f"| {load_range(run.name)} |"
                    )
    return "\n".join(rows)


if __name__ == "__main__":
    print("## ResNet-18\n")
    print(table("resnet"))
    print("\n## Digits\n")
    print(table("digits"))
    print("\n## RSS, 8 local steps\n")
    print(table("rss"))
