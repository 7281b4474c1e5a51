"""Print the markdown tables of docs/results/privacy.md from the attack results beside this file.

python docs/results/privacy/table.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
NAMES = {"heron": "heron-sfl (ZO)", "cse": "cse-fsl (FO)", "sflv2": "sflv2 (FO)"}
NAMES["frozen"] = "frozen-client control"
DEFENSES = {"none": "none", "noise": "noise σ=0.5", "nopeek": "NoPeek w=1"}


def rows(dataset: str) -> list[str]:
    out = [
        "| algorithm | defense | test acc | round | decoder PSNR (dB) | decoder SSIM "
        "| UnSplit PSNR / SSIM | mean-image PSNR / SSIM | labels from gradients |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    order = [f"{a}-{d}" for d in DEFENSES for a in NAMES]
    for name in order:
        path = HERE / dataset / name / "inversion.json"
        if not path.exists():
            continue
        res = json.loads(path.read_text())
        a, d = name.split("-")
        b = res["baseline_mean_image"]
        g = res["labels"]["gradient_inference"]
        lab = (
            "in the clear"
            if g is None
            else (
                f"in the clear; gradients alone: anchors {g['anchor_accuracy']:.2f}, "
                f"k-means {g['cluster_accuracy']:.2f}"
            )
        )
        acc = res["run_test_accuracy"]
        for e in res["rounds"]:
            u = e.get("unsplit")
            us = "-" if u is None else f"{u['psnr']:.1f} / {u['ssim']:.3f}"
            last = e["round"] == res["checkpoint_round"]  # the accuracy is the run's final one
            out.append(
                f"| {NAMES[a]} | {DEFENSES[d]} | {f'{acc:.3f}' if last else '-'} | {e['round']} "
                f"| {e['decoder']['psnr']:.1f} | {e['decoder']['ssim']:.3f} | {us} "
                f"| {b['psnr']:.1f} / {b['ssim']:.3f} | {lab} |"
            )
    return out


if __name__ == "__main__":
    for dataset in ("digits", "cifar10"):
        print(f"\n{dataset}\n")
        print("\n".join(rows(dataset)))
