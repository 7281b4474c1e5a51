"""`heronsfl attack inversion` end to end on a tiny digits run, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from heronsfl.cli import main
from heronsfl.config import to_toml
from heronsfl.registry import load_config
from tests.conftest import TINY

pytest.importorskip("skimage", reason="heronsfl attack needs the privacy extra")

FAST = [
    "--decoder-steps",
    "60",
    "--decoder-width",
    "16",
    "--unsplit-steps",
    "20",
    "--images",
    "48",
    "--show",
    "4",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "sflv2"
    args = [*TINY, "model.width=8", "algorithm=sflv2", "rounds=1", "train.local_steps=3"]
    assert main(["run", *args, "privacy.keep_client_rounds=true", "--out", str(out), "-q"]) == 0
    return out


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("heronsfl: error: "), err
    return err


def test_attack_beats_the_mean_image(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    # (the run kept every round: 0, its initialisation, and 1)
    argv = ["attack", "inversion", str(run_dir), "--out", str(tmp_path), "--rounds", "all"]
    assert main([*argv, *FAST]) == 0
    out = capsys.readouterr().out
    # Assert
    res = json.loads((tmp_path / "inversion.json").read_text())
    assert [r["round"] for r in res["rounds"]] == [0, 1]
    for r in res["rounds"]:
        assert r["decoder"]["psnr"] > res["baseline_mean_image"]["psnr"] + 3
        assert (tmp_path / r["png"]).stat().st_size > 1000
    assert "unsplit" in res["rounds"][-1] and "decoder PSNR" in out
    # SFLV2 returns cut gradients: the label attack runs; labels also travel in the clear.
    g = res["labels"]["gradient_inference"]
    assert res["labels"]["uploaded_in_clear"] and 0 <= g["anchor_accuracy"] <= 1
    exposure = res["label_exposure"]
    assert exposure["heron-sfl"]["uploads_labels"] and exposure["heron-sfl"]["local_loss"]
    assert exposure["sflv2"]["returns_gradients"] and not exposure["fedavg"]["uploads_labels"]


def test_attack_errors(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = ["--out", str(tmp_path / "a")]
    # A run directory without a checkpoint
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.toml").write_text((run_dir / "config.toml").read_text())
    assert "no checkpoint.pt" in _error(capsys, "attack", "inversion", str(bare), *out)
    # An algorithm with no cut
    fl = tmp_path / "fedavg"
    fl.mkdir()
    (fl / "config.toml").write_text(to_toml(load_config(None, [*TINY, "algorithm=fedavg"])))
    assert "no cut" in _error(capsys, "attack", "inversion", str(fl), *out)
    # Missing directory, a round that was not kept, bad flags
    assert "does not exist" in _error(capsys, "attack", "inversion", str(tmp_path / "x"), *out)
    err = _error(capsys, "attack", "inversion", str(run_dir), *out, "--rounds", "7")
    assert "round 7" in err
    assert "--images" in _error(capsys, "attack", "inversion", str(run_dir), *out, "--images", "-1")
    assert "--out" in _error(capsys, "attack", "inversion", str(run_dir))
    assert "invalid choice" in _error(capsys, "attack", "nonsense")
    assert not (tmp_path / "a").exists()  # nothing half-written
