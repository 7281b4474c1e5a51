"""One round of HERON-SFL and of SplitLoRA on tiny LMs: only LoRA tensors change or travel."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from heronsfl.engines.simulation import Simulation
from heronsfl.lm.e2e import ByteTokenizer
from heronsfl.lm.generation import generate
from heronsfl.lm.metrics import score_e2e
from tests.lm.conftest import E2E_DIR, SHARED, lm_config


def _params(sim: Simulation) -> dict[str, torch.Tensor]:
    mods = {"client": sim.model.client, "server": sim.model.server, "aux": sim.model.aux}
    return {
        f"{k}.{n}": p.detach().clone()
        for k, m in mods.items()
        if m is not None
        for n, p in m.named_parameters()
    }


@pytest.mark.parametrize("algorithm", ["heron-sfl", "splitlora"])
def test_a_round_changes_lora_only(tiny_lm_task: str, algorithm: str) -> None:
    # Prepare
    sim = Simulation(lm_config(tiny_lm_task, f"algorithm={algorithm}"))
    before = _params(sim)
    # Execute
    record = sim.run_round()
    from heronsfl.state import load_prefixed

    load_prefixed(sim.averaged(), sim.global_state)  # the Fed-Server's client (+ aux) state
    after = _params(sim)
    # Assert: frozen base bit-identical; every part's LoRA moved
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)
    parts = ["client", "server"] + (["aux"] if algorithm == "heron-sfl" else [])
    for part in parts:
        assert any(k.startswith(part + ".") for k in changed), part
    # Only adapters travel: the global state and the model bytes are LoRA tensors.
    assert sim.global_state and all("lora_" in k for k in sim.global_state)
    lora_bytes = sum(v.numel() * 4 for v in sim.global_state.values())  # fp32 wire here
    assert record["comm/down_model_bytes"] == 2 * lora_bytes  # 2 clients
    assert math.isclose(record["test/perplexity"], math.exp(record["test/loss"]), rel_tol=1e-9)


def test_generation_and_scores_run_end_to_end(tiny_lm_task: str) -> None:
    sim = Simulation(lm_config(tiny_lm_task))
    mrs = ["name[Aromi], food[Thai]", "name[Eagle]"]
    hyps = generate(sim.model.full, ByteTokenizer(), mrs, max_new_tokens=6, pad_id=256)
    assert len(hyps) == 2 and all(isinstance(h, str) for h in hyps)


def test_scores_match_hand_checked_values(monkeypatch: pytest.MonkeyPatch) -> None:
    hyps = ["The Eagle serves French food .", "Aromi is a pub ."]
    refs = [["The Eagle serves French food .", "French food at The Eagle ."], ["Aromi is a pub ."]]
    s = score_e2e(hyps, refs)
    assert s["bleu"] == pytest.approx(100.0)  # every hypothesis equals one of its references
    assert s["rouge_l"] == pytest.approx(1.0)
    assert s["nist"] > 0 and s["cider"] > 0
    if "meteor" in s:
        assert 0.9 < s["meteor"] <= 1.0
    # Without java METEOR is left out, not zeroed (and the test skips the jar's start-up).
    monkeypatch.setattr("heronsfl.lm.metrics.shutil.which", lambda _: None)
    worse = score_e2e(["Aromi .", "food"], refs)
    assert "meteor" not in worse and all(worse[k] < s[k] for k in worse)
    assert score_e2e(["", ""], refs)["nist"] == 0.0  # no words: nothing matches
    with pytest.raises(ValueError, match="one hypothesis per MR"):
        score_e2e(hyps[:1], refs)


def test_bench_measures_an_lm_task(tiny_lm_task: str) -> None:
    from heronsfl.bench import resources

    rows = {
        r["algorithm"]: r
        for r in resources(tiny_lm_task, batch_size=2, algorithms=["heron-sfl", "splitlora"])
    }
    assert all(
        r["client_macs_per_step"] > 0 and r["client_peak_mem_bytes"] > 0 for r in rows.values()
    )
    # SplitLoRA's gradient comes back at the cut: B x T x C at FP16 (tiny presets: T 32, C 32).
    assert rows["splitlora"]["downlink_bytes_per_step"] == 2 * 32 * 32 * 2
    assert rows["heron-sfl"]["downlink_bytes_per_step"] == 0


def test_lm_tasks_are_registered_with_the_paper_cuts() -> None:
    from heronsfl.lm.tasks import PRESETS, random_inputs
    from heronsfl.tasks import TASKS

    assert TASKS["gpt2s-e2e"].paper_cut == "h.2" and TASKS["gpt2m-e2e"].paper_cut == "h.5"
    assert TASKS["smollm2-e2e"].paper_cut == "layers.2" and TASKS["gpt2m-e2e"].reports_perplexity
    x, y = random_inputs(PRESETS["gpt2m-e2e"], 2, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (2, 512)
    targets = (y[0] != -100).nonzero().flatten().tolist()
    assert targets == list(range(32, 58))  # E2E's mean prompt (33) and reference (26) lengths
    assert torch.equal(y[:, 32:58], x[:, 33:59])


@pytest.mark.skipif(not (E2E_DIR / "testset_w_refs.csv").is_file(), reason="no offline E2E copy")
def test_a_run_ends_with_generation_scores(
    tiny_lm_task: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from heronsfl.runner import run_experiment
    from heronsfl.tasks import load_datasets

    monkeypatch.setattr("heronsfl.lm.metrics.shutil.which", lambda _: None)  # no METEOR start-up
    cfg = lm_config(tiny_lm_task, f"data.root={SHARED}", "data.test_mrs=2", "data.test_subset=3")
    assert len(load_datasets(cfg, "test")) == 3  # subsets work on token datasets
    summary = run_experiment(cfg, tmp_path / "run")
    scores = summary["final_metrics"]
    assert scores["test/generated_mrs"] == 2
    assert {"test/bleu", "test/nist", "test/rouge_l", "test/cider"} <= set(scores)
