from __future__ import annotations

import json

import pytest

from heronsfl.bench import resources
from heronsfl.cli import main

# Per-sample forward MACs of the paper split (client = stem + layer1.0, aux = Linear(65536, 10)):
STEM = 3 * 64 * 9 * 32 * 32  # 1,769,472
BLOCK = 2 * 64 * 64 * 9 * 32 * 32  # 75,497,472
AUX = 64 * 32 * 32 * 10  # 655,360


def test_paper_split_macs_are_exact_at_small_batch() -> None:
    """At batch 256 these are the paper's 39.90 G (HERON) and ~59.4 G (CSE-FSL); MACs scale
    linearly in the batch, so batch 2 checks the same formulas quickly."""
    b = 2
    names = ["heron-sfl", "cse-fsl", "sflv2"]
    rows = {r["label"]: r for r in resources("resnet18-cifar10", batch_size=b, algorithms=names)}

    fwd = STEM + BLOCK + AUX
    assert rows["heron-sfl"]["client_macs_per_step"] == 2 * b * fwd
    assert rows["cse-fsl"]["client_macs_per_step"] == b * (3 * fwd - STEM)
    assert rows["sflv2"]["client_macs_per_step"] == b * (3 * (STEM + BLOCK) - STEM)
    assert 2 * 256 * fwd / 1e9 == pytest.approx(39.90, abs=0.005)
    # Bytes: fp16 activations (64x32x32 per sample) + int64 labels up; SFLV2 gets them back.
    assert rows["heron-sfl"]["uplink_bytes_per_step"] == b * 64 * 32 * 32 * 2 + b * 8
    assert rows["sflv2"]["downlink_bytes_per_step"] == b * 64 * 32 * 32 * 2
    assert rows["heron-sfl"]["downlink_bytes_per_step"] == 0


def test_heron_peak_memory_is_lowest_once_activations_dominate() -> None:
    # At batch 32 activations (8 MiB each at the cut) already dominate parameters (2.9 MB).
    names = ["heron-sfl", "cse-fsl", "sflv2"]
    rows = {r["label"]: r for r in resources("resnet18-cifar10", batch_size=32, algorithms=names)}

    heron = rows["heron-sfl"]["client_peak_mem_bytes"]
    assert heron < 0.5 * rows["sflv2"]["client_peak_mem_bytes"]
    assert heron < 0.6 * rows["cse-fsl"]["client_peak_mem_bytes"]


def test_bench_cli_json_has_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "bench",
            "resources",
            "--task",
            "cnn-digits",
            "--batch-size",
            "8",
            "--json",
            "--algorithms",
            "heron-sfl,sflv2",
            "--upload-every",
            "4",
        ]
    )
    rows = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [r["label"] for r in rows] == ["heron-sfl", "sflv2", "heron-sfl (seeds)"]

    for key in [
        "algorithm",
        "client_peak_mem_bytes",
        "client_macs_per_step",
        "client_flops_per_step",
        "uplink_bytes_per_step",
        "downlink_bytes_per_step",
    ]:
        assert key in rows[0], key
    assert rows[0]["uplink_bytes_per_step"] == rows[0]["upload_bytes"] / 4
    assert rows[1]["upload_every"] == 1
    # Seeds exchange: buffers + h * (8 + 4q) bytes instead of the parameters.
    seeds = rows[2]
    assert seeds["zo_exchange"] == "seeds"
    assert seeds["model_up_bytes_per_round"] < rows[0]["model_up_bytes_per_round"] / 10


def test_bench_unknown_algorithm_is_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "resources", "--task", "cnn-digits", "--algorithms", "heron"])
    assert code == 2 and "unknown algorithm 'heron'" in capsys.readouterr().err
