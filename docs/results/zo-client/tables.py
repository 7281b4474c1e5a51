"""The tables of docs/results/zo-client.md, from the committed run records next to this file.

    python docs/results/zo-client/tables.py

Digits: every option's final-round aux and global accuracy over seeds 0-2 (mean, sample standard
deviation), against its own frozen-client control at the same seeds; the difference is paired by
seed (option minus control, then mean and standard deviation of the three differences).
CIFAR-10: each shortened run's per-round records side by side. Bench: client peak memory and
MACs per step from `heronsfl bench resources --json`, relative to SFLV2's and CSE-FSL's.
"""

import json
import statistics
from pathlib import Path

HERE = Path(__file__).parent

# (label, sweep folder, run-name filter, control: (sweep folder, filter) or None)
DIGITS = [
    ("dense ZO-SGD 1e-3 (HERON-SFL, digits.md's best)", "baselines", {}, ("baselines", {})),
    ("dense ZO-Adam 1e-2 (demo preset)", "adam", {}, ("adam", {})),
    ("lowrank r=1, ZO-SGD 1e-3", "perturbations", {"zo.perturbation": "lowrank"}, "same"),
    ("sparse 0.1, ZO-SGD 1e-3", "perturbations", {"zo.perturbation": "sparse"}, "same"),
    (
        "sparse-magnitude 0.1, ZO-SGD 1e-3",
        "perturbations",
        {"zo.perturbation": "sparse-magnitude"},
        "same",
    ),
    ("block (4), ZO-SGD 1e-3", "perturbations", {"zo.perturbation": "block"}, "same"),
    (
        "dense ZO-SGD momentum 0.9, lr 1e-4",
        "optimizers",
        {"zo.perturbation": "dense", "client_optim.lr": "0.0001"},
        "same",
    ),
    (
        "dense ZO-SGD momentum 0.9, lr 1e-3",
        "optimizers",
        {"zo.perturbation": "dense", "client_optim.lr": "0.001"},
        "same",
    ),
    (
        "LOZO-M (lowrank r=1, momentum 0.9), lr 1e-4",
        "optimizers",
        {"zo.perturbation": "lowrank", "client_optim.lr": "0.0001"},
        "same",
    ),
    (
        "LOZO-M (lowrank r=1, momentum 0.9), lr 1e-3",
        "optimizers",
        {"zo.perturbation": "lowrank", "client_optim.lr": "0.001"},
        "same",
    ),
    ("ZO-SignSGD lr 1e-4", "signsgd", {"client_optim.lr": "0.0001"}, "same"),
    ("ZO-SignSGD lr 1e-3", "signsgd", {"client_optim.lr": "0.001"}, "same"),
    ("q=4 one-sided probes, ZO-SGD 1e-3", "probes", {"zo.estimator": "one-sided"}, "same"),
    ("q=4 antithetic pairs (central), ZO-SGD 1e-3", "probes", {"zo.estimator": "central"}, "same"),
    ("hybrid: dense ZO-SGD 1e-3 client, FO aux Adam 1e-2", "hybrid", {}, ("hybrid", {})),
    (
        "hybrid + lowrank r=1",
        "hybrid_structured",
        {"zo.perturbation": "lowrank"},
        ("hybrid", {}),
    ),
    ("hybrid + sparse 0.1", "hybrid_structured", {"zo.perturbation": "sparse"}, ("hybrid", {})),
    (
        "hybrid + sparse-magnitude 0.1",
        "hybrid_structured",
        {"zo.perturbation": "sparse-magnitude"},
        ("hybrid", {}),
    ),
    ("hybrid + block (4)", "hybrid_structured", {"zo.perturbation": "block"}, ("hybrid", {})),
    ("cse-fsl (FO client + aux, Adam 1e-2)", "cse_fsl", {}, None),
]
SEEDS = ("0", "1", "2")


def _name(run: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in run.split(","))


def _final(path: Path) -> dict:
    return json.loads(path.read_text().splitlines()[-1])


def _runs(sweep: str, match: dict[str, str], frozen: bool | None) -> dict[str, dict]:
    """Final-round record per seed of the runs in `sweep` whose names carry `match`."""
    out = {}
    for metrics in sorted((HERE / "digits" / sweep).glob("*/metrics.jsonl")):
        keys = _name(metrics.parent.name)
        if any(keys.get(k) != v for k, v in match.items()):
            continue
        if frozen is not None and keys.get("model.freeze_client", "false") != str(frozen).lower():
            continue
        out[keys["seed"]] = _final(metrics)
    return out


def _ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def _dms(values: list[float]) -> str:
    if not values:
        return ""
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):+.3f} ± {sd:.3f}"


def digits() -> str:
    rows = [
        "| client option | seeds | aux acc | frozen aux acc | Δ aux (paired) | test acc "
        "| frozen test acc | Δ test (paired) | Δ local loss (paired) | peak mem (KB) "
        "| MACs/step (M) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, sweep, match, control in DIGITS:
        runs = _runs(sweep, match, False if control else None)
        if control == "same":
            control = (sweep, match)
        ctrl = _runs(control[0], control[1], True) if control else {}
        seeds = [s for s in SEEDS if s in runs]
        if not seeds:
            rows.append(f"| {label} | 0 | (not run) | | | | | | | | |")
            continue
        paired = [s for s in seeds if s in ctrl]
        aux = [runs[s]["aux/accuracy"] for s in seeds]
        test = [runs[s]["test/accuracy"] for s in seeds]
        c_aux = [ctrl[s]["aux/accuracy"] for s in paired]
        c_test = [ctrl[s]["test/accuracy"] for s in paired]
        d_aux = [runs[s]["aux/accuracy"] - ctrl[s]["aux/accuracy"] for s in paired]
        d_test = [runs[s]["test/accuracy"] - ctrl[s]["test/accuracy"] for s in paired]
        d_loss = [runs[s]["train/client_loss"] - ctrl[s]["train/client_loss"] for s in paired]
        first = runs[seeds[0]]
        rows.append(
            f"| {label} | {len(seeds)} | {_ms(aux)} | {_ms(c_aux) if control else ''} "
            f"| {_dms(d_aux)} | {_ms(test)} | {_ms(c_test) if control else ''} "
            f"| {_dms(d_test)} | {_dms(d_loss)} | {first['client/peak_mem_bytes'] / 1e3:.1f} "
            f"| {first['client/macs_per_step'] / 1e6:.3f} |"
        )
    return "\n".join(rows)


# (label, run folder under cifar10/ or ../cifar10/, control folder or None)
CIFAR = [
    ("frozen client (control), ZO-Adam aux", "heron_frozen_s0", None),
    ("heron-sfl: dense ZO-Adam client + aux", "heron_dense_s0", "heron_frozen_s0"),
    ("hybrid frozen (control): FO Adam aux", "hybrid_frozen_s0", None),
    ("hybrid frozen (control): FO Adam aux", "hybrid_frozen_s1", None),
    ("hybrid: dense ZO-Adam client, FO Adam aux", "hybrid_dense_s0", "hybrid_frozen_s0"),
    ("hybrid: dense ZO-Adam client, FO Adam aux", "hybrid_dense_s1", "hybrid_frozen_s1"),
    (
        "hybrid + sparse-magnitude 0.1 (ZO-Adam client), stopped after round 1",
        "hybrid_sparse-magnitude_s0",
        "hybrid_frozen_s0",
    ),
    ("hybrid frozen (control): FO Adam aux", "hybrid_frozen_s2", None),
    ("hybrid: ZO-SGD 1e-4 client, FO Adam 1e-3 aux", "hybrid_zosgd_s0", "hybrid_frozen_s0"),
    ("hybrid: ZO-SGD 1e-4 client, FO Adam 1e-3 aux", "hybrid_zosgd_s1", "hybrid_frozen_s1"),
    ("hybrid: ZO-SGD 1e-4 client, FO Adam 1e-3 aux", "hybrid_zosgd_s2", "hybrid_frozen_s2"),
    ("hybrid ZO-SGD + sparse 0.1", "hybrid_zosgd_sparse_s0", "hybrid_frozen_s0"),
    ("hybrid ZO-SGD + lowrank r = 1", "hybrid_zosgd_lowrank_s0", "hybrid_frozen_s0"),
    ("heron-sfl + sparse 0.1 (ZO-Adam client + aux)", "sparse_zoadam_s0", "heron_frozen_s0"),
    ("cse-fsl (FO client + aux)", "../../cifar10/default-init/cse-fsl", None),
    ("sflv2 (no aux head)", "../../cifar10/default-init/sflv2", None),
]


def _records(folder: str) -> list[dict]:
    path = HERE / "cifar10" / folder / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()][:3]


def cifar() -> str:
    def cell(recs: list[dict], i: int, key: str) -> str:
        return f"{recs[i][key]:.4f}" if i < len(recs) and key in recs[i] else ""

    rows = [
        "| client | seed | test r1 | test r2 | test r3 | aux r1 | aux r2 | aux r3 "
        "| Δ test r3 | Δ aux r3 | local loss r3 | peak mem (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, folder, control in CIFAR:
        recs = _records(folder)
        if not recs:
            rows.append(f"| {label} | | (not run) | | | | | | | | | |")
            continue
        seed = folder.rsplit("_s", 1)[1] if "_s" in folder else "0"
        ctrl = _records(control) if control else []
        d_test = d_aux = ""
        if len(ctrl) == 3 and len(recs) == 3:
            d_test = f"{recs[2]['test/accuracy'] - ctrl[2]['test/accuracy']:+.4f}"
            d_aux = f"{recs[2]['aux/accuracy'] - ctrl[2]['aux/accuracy']:+.4f}"
        test = " | ".join(cell(recs, i, "test/accuracy") for i in range(3))
        aux = " | ".join(cell(recs, i, "aux/accuracy") for i in range(3))
        rows.append(
            f"| {label} | {seed} | {test} | {aux} | {d_test} | {d_aux} "
            f"| {cell(recs, len(recs) - 1, 'train/client_loss')} "
            f"| {recs[0]['client/peak_mem_bytes'] / 1e6:.1f} |"
        )
    return "\n".join(rows)


# bench row label -> the name in the doc's table
BENCH = {
    "sflv2": "sflv2",
    "cse-fsl": "cse-fsl",
    "heron-sfl": "heron-sfl (ZO-Adam, the presets' optimizer)",
    "heron zo-sgd": "ZO-SGD (in place)",
    "heron zo-sgd-m": "ZO-SGD momentum 0.9",
    "heron zo-signsgd": "ZO-SignSGD",
    "heron lowrank": "lowrank r = 1",
    "heron lozo-m": "LOZO-M (lowrank + momentum 0.9)",
    "heron sparse": "sparse 0.1",
    "heron sparse-mag": "sparse-magnitude 0.1",
    "heron block": "block (4)",
    "heron q=4": "q = 4, sequential",
    "heron q=4 central": "q = 4 antithetic pairs (central)",
    "heron q=4 batched": "q = 4, batched (vmap)",
    "heron hybrid": "hybrid (ZO-SGD client, Adam aux)",
    "heron hybrid lozo-m": "hybrid + LOZO-M",
    "heron adam sparse": "ZO-Adam + sparse 0.1",
    "heron hybrid adam": "hybrid (ZO-Adam client, Adam aux)",
    "heron hybrid adam sparse-mag": "hybrid (ZO-Adam client) + sparse-magnitude 0.1",
}


def bench() -> str:
    """The paper split's and the FSL-SAGE split's bench rows side by side."""

    def load(name: str) -> tuple[dict[str, dict], int, int]:
        by = {r["label"]: r for r in json.loads((HERE / name).read_text())}
        return by, by["sflv2"]["client_peak_mem_bytes"], by["cse-fsl"]["client_peak_mem_bytes"]

    (a, sa, _), (b, sb, cb) = load("bench_cifar_b256.json"), load("bench_fslsage_b256.json")
    out = [
        "| client | paper split: peak MB | vs SFLV2 | MACs/step (G) "
        "| FSL-SAGE split: peak MB | vs SFLV2 | vs CSE-FSL | MACs/step (G) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, label in BENCH.items():
        x, y = a[key]["client_peak_mem_bytes"], b[key]["client_peak_mem_bytes"]
        mx, my = a[key]["client_macs_per_step"] / 1e9, b[key]["client_macs_per_step"] / 1e9
        out.append(
            f"| {label} | {x / 1e6:.1f} | {x / sa:.2f} | {mx:.2f} "
            f"| {y / 1e6:.1f} | {y / sb:.3f} | {y / cb:.2f} | {my:.2f} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    print("## Client cost per step, batch 256\n")
    print(bench())
    print()
    print("## Digits, round 20\n")
    print(digits())
    print("\n## CIFAR-10, shortened\n")
    print(cifar())
