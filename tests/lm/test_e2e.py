from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from heronsfl.algorithms.base import IGNORE_INDEX
from heronsfl.errors import DataError
from heronsfl.lm.e2e import (
    E2E_FILES,
    ByteTokenizer,
    download_e2e,
    encode_pairs,
    group_references,
    load_e2e,
    read_e2e_csv,
)
from tests.lm.conftest import E2E_DIR, SHARED

needs_e2e = pytest.mark.skipif(
    not (E2E_DIR / "trainset.csv").is_file(), reason=f"no offline E2E copy at {E2E_DIR}"
)


@needs_e2e
@pytest.mark.parametrize(
    ("split", "rows", "mrs"), [("train", 42_061, 4_862), ("dev", 4_672, 547), ("test", 4_693, 630)]
)
def test_real_e2e_files_parse_to_the_official_counts(split: str, rows: int, mrs: int) -> None:
    data = load_e2e(SHARED, split)  # type: ignore[arg-type]
    assert len(data) == rows and E2E_FILES[split][2] == rows
    assert len(group_references(data)) == mrs
    assert all(mr.startswith("name[") and ref for mr, ref in data)


@needs_e2e
def test_quoted_newlines_and_crlf_stay_inside_one_reference() -> None:
    rows = read_e2e_csv(E2E_DIR / "trainset.csv")
    multiline = [ref for _, ref in rows if "\n" in ref]
    assert len(multiline) == 2  # the two references the data README describes
    assert not any(ref.endswith("\r") or mr.endswith("\r") for mr, ref in rows)


def test_ignore_index_is_the_losses() -> None:
    from heronsfl.lm.e2e import IGNORE_INDEX as LM_IGNORE

    assert LM_IGNORE == IGNORE_INDEX


def test_grouping_keeps_first_appearance_order() -> None:
    rows = [("b", "1"), ("a", "2"), ("b", "3")]
    assert group_references(rows) == [("b", ["1", "3"]), ("a", ["2"])]


def test_loss_is_only_on_reference_tokens_and_padding_is_right() -> None:
    # Prepare: bytes as tokens make the prompt/target boundary easy to see
    tok = ByteTokenizer()
    ds = encode_pairs([("mr", "ab"), ("longer mr", "c")], tok, max_length=64, pad_id=256)
    # Execute
    x0, y0 = ds.x[0].tolist(), ds.y[0].tolist()
    # Assert: "mr ->" is 5 prompt tokens; then " ab" and the end token are predicted
    assert x0[:8] == list(b"mr -> ab") and x0[8:] == [256] * (len(x0) - 8)
    targets = [(i, t) for i, t in enumerate(y0) if t != IGNORE_INDEX]
    assert targets == [(4, ord(" ")), (5, ord("a")), (6, ord("b")), (7, 256)]
    assert ds.x.shape == ds.y.shape == (2, len(b"longer mr -> c"))  # longest sample, minus 1
    assert ds.x.dtype == torch.int64


def test_too_long_samples_are_cut_and_promptless_ones_dropped() -> None:
    ds = encode_pairs([("m" * 10, "r" * 10), ("m" * 30, "r")], ByteTokenizer(), 16, 256)
    assert len(ds) == 1 and ds.x.shape[1] == 16


def test_missing_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.root"):
        load_e2e(tmp_path, "dev")


@needs_e2e
def test_download_checks_the_official_checksum(tmp_path: Path) -> None:
    # A file:// "mirror" of the shared copy stands in for the official URL.
    src = tmp_path / "mirror"
    src.mkdir()
    shutil.copy(E2E_DIR / "testset_w_refs.csv", src / "testset_w_refs.csv")
    got = download_e2e(tmp_path / "root", "test", base_url=src.as_uri() + "/")
    assert (
        got == tmp_path / "root" / "e2e" / "testset_w_refs.csv" and len(read_e2e_csv(got)) == 4693
    )
    (src / "devset.csv").write_text("mr,ref\nx,y\n")
    with pytest.raises(DataError, match="sha256"):
        download_e2e(tmp_path / "root", "dev", base_url=src.as_uri() + "/")
    assert not (tmp_path / "root" / "e2e" / "devset.csv").exists()
