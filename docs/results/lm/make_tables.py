"""Markdown tables of docs/results/lm/README.md from the bench JSON and the run directories.

python docs/results/lm/make_tables.py BENCH_gpt2s.json BENCH_gpt2m.json RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# The paper's Table 3 (GPT-2 M, E2E): client peak memory (GB) and compute per step (T).
PAPER_GPT2M = {"heron-sfl": (4.03, 5.26), "splitlora": (4.59, 5.68), "cse-fsl": (9.09, 9.48)}


def bench_table(path: str) -> str:
    rows = json.loads(Path(path).read_text())
    r0 = rows[0]
    paper = PAPER_GPT2M if r0["task"] == "gpt2m-e2e" else {}
    lines = [
        f"`{r0['task']}`: batch {r0['batch_size']} x {r0['input_shape'][0]} tokens, cut "
        f"`{r0['cut']}` {tuple(r0['cut_shape'])}, {r0['device']}, wire {r0['wire_dtype']}",
        "",
        "| algorithm | peak mem (GB) | MACs/step (T) | up/step (MB) | down/step (MB) "
        "| model up+down/round (MB) | paper mem (GB) | paper compute (T) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        p = paper.get(r["label"], ("-", "-"))
        lines.append(
            f"| {r['label']} | {r['client_peak_mem_bytes'] / 1e9:.2f} "
            f"| {r['client_macs_per_step'] / 1e12:.3f} | {r['uplink_bytes_per_step'] / 1e6:.2f} "
            f"| {r['downlink_bytes_per_step'] / 1e6:.2f} | {r['model_bytes_per_round'] / 1e6:.3f} "
            f"| {p[0]} | {p[1]} |"
        )
    return "\n".join(lines)


def run_table(dirs: list[str]) -> str:
    lines = [
        "| run | val. perplexity per round | comm. per round (MB) | BLEU | NIST | METEOR "
        "| ROUGE-L | CIDEr | client peak mem (MB) | client MACs/step (G) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for d in dirs:
        recs = [json.loads(x) for x in (Path(d) / "metrics.jsonl").read_text().splitlines()]
        fm = json.loads((Path(d) / "summary.json").read_text()).get("final_metrics", {})
        ppl = " -> ".join(f"{r['test/perplexity']:.2f}" for r in recs)
        last = recs[-1]
        comm = (last["comm/uplink_bytes"] + last["comm/downlink_bytes"]) / len(recs) / 1e6
        scores = " | ".join(
            f"{fm[k]:.4g}" if k in fm else "-"
            for k in ("test/bleu", "test/nist", "test/meteor", "test/rouge_l", "test/cider")
        )
        lines.append(
            f"| {Path(d).name} | {ppl} | {comm:.1f} | {scores} "
            f"| {last['client/peak_mem_bytes'] / 1e6:.0f} "
            f"| {last['client/macs_per_step'] / 1e9:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    benches = [a for a in sys.argv[1:] if a.endswith(".json")]
    runs = [a for a in sys.argv[1:] if not a.endswith(".json")]
    for b in benches:
        print(bench_table(b), end="\n\n")
    if runs:
        print(run_table(runs))
