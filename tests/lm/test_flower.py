"""A language-model run deployed on Flower ends as the same run in the simulator ends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from heronsfl.runner import run_experiment
from tests.lm.conftest import E2E_DIR, SHARED, lm_config


@pytest.mark.skipif(not (E2E_DIR / "testset_w_refs.csv").is_file(), reason="no offline E2E copy")
@pytest.mark.parametrize("tiny_lm_task", ["gpt2"], indirect=True)
def test_an_lm_run_on_flower_ends_with_the_simulators_summary(
    tiny_lm_task: str, serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    monkeypatch.setattr("heronsfl.lm.metrics.shutil.which", lambda _: None)  # no METEOR start-up
    cfg = lm_config(tiny_lm_task, "algorithm=heron-sfl", f"data.root={SHARED}", "data.test_mrs=2")
    # Execute
    server, _ = serve(cfg)
    expected = run_experiment(cfg, tmp_path / "sim")
    summary = json.loads((Path(server.opts.out) / "summary.json").read_text())
    # Assert: the same keys, E2E generation scores included, from the same final model
    assert summary.keys() == expected.keys()
    assert {"test/bleu", "test/rouge_l", "test/generated_mrs"} <= summary["final_metrics"].keys()
    assert summary["final_metrics"] == expected["final_metrics"]
