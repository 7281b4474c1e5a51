"""E2E NLG (Novikova, Dušek, Rieser, SIGDIAL 2017, arXiv 1706.09254) as a conditional LM task.

Files: the official CSVs (columns `mr`, `ref`), read with the csv module because they use CRLF
line endings and two references hold a newline inside quotes. Each sample is the text
``"{mr} ->"`` followed by ``" {ref}"`` and the tokenizer's end-of-sequence token; the loss is
taken on the reference tokens (and the end token) only.

Token tensors: `x` (N, T) int64 input ids, right-padded; `y` (N, T) int64 next-token targets with
IGNORE_INDEX on the prompt and padding. T is the longest sample of the split (at most
`max_length`), so a batch never pays for more padding than its split needs.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import tempfile
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from heronsfl.errors import DataError

logger = logging.getLogger(__name__)

# algorithms.base.IGNORE_INDEX (PyTorch's cross-entropy default), not imported from there: the
# algorithms package imports engine code that imports the task registry, which imports this.
IGNORE_INDEX = -100
E2ESplit = Literal["train", "dev", "test"]
# The official release (tuetschek/e2e-dataset, CC BY-SA 4.0) and the sha256 of each file.
E2E_FILES: dict[str, tuple[str, str, int]] = {
    "train": (
        "trainset.csv",
        "f27d48df45815288ab15619d47a79028c300fbb7f42e373668aba0b98c1d57c6",
        42_061,
    ),
    "dev": (
        "devset.csv",
        "fc26b78cdb849c80545f513b223d1e051138b43882eeb79e3eb153e689c864f9",
        4_672,
    ),
    "test": (
        "testset_w_refs.csv",
        "edc8db685e39bb9824d5bd70c18b1c9b0412d14b527aa960e2d1c8251ee15ccd",
        4_693,
    ),
}
E2E_URL = "https://raw.githubusercontent.com/tuetschek/e2e-dataset/master/"
SEPARATOR = " ->"
# Mean lengths in a ~50k-token BPE (measured with SmolLM2's tokenizer on trainset.csv): the
# prompt "mr ->" and the reference with its end token. The bench lays out random batches so.
E2E_PROMPT_TOKENS = 33
E2E_TARGET_TOKENS = 26


class Tokenizer(Protocol):
    """What the E2E encoding needs from a tokenizer (Hugging Face tokenizers fit)."""

    eos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, end-of-sequence 256: the tokenizer of randomly initialised
    models (tests, costs), which have no trained vocabulary to honour."""

    eos_token_id = 256
    pad_token_id = 256
    vocab_size = 257

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------- files


def e2e_path(root: str | Path, split: E2ESplit) -> Path:
    """Where `split` lives under `root`: root/e2e/<file>, or root/<file>."""
    name = E2E_FILES[split][0]
    for cand in (Path(root) / "e2e" / name, Path(root) / name):
        if cand.is_file():
            return cand
    return Path(root) / "e2e" / name


def read_e2e_csv(path: str | Path) -> list[tuple[str, str]]:
    """(mr, ref) rows of an official E2E CSV, in file order.

    Raises:
        DataError: The file is missing or has no `mr` and `ref` columns.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"no E2E file at '{path}'; pass data.root=DIR holding e2e/{path.name} "
            "(e.g. ../shared/data), or data.download=true when online"
        )
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = {f.lower(): f for f in reader.fieldnames or []}
        if "mr" not in fields or "ref" not in fields:
            raise DataError(
                f"'{path}' has columns {reader.fieldnames}, expected 'mr' and 'ref'; "
                "point data.root at the official E2E CSVs"
            )
        return [(row[fields["mr"]], row[fields["ref"]]) for row in reader]


def group_references(rows: Iterable[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """(mr, [ref, ...]) per distinct MR, in order of first appearance (the E2E test protocol
    scores one output per MR against all of its references)."""
    groups: dict[str, list[str]] = {}
    for mr, ref in rows:
        groups.setdefault(mr, []).append(ref)
    return list(groups.items())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_e2e(root: str | Path, split: E2ESplit, base_url: str = E2E_URL) -> Path:
    """Fetch one official CSV into root/e2e/ (sha256-checked, written atomically).

    Raises:
        DataError: The download fails or the file's checksum is not the official one.
    """
    name, sha, _ = E2E_FILES[split]
    dest = Path(root) / "e2e" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(base_url + name) as resp:
            out.write(resp.read())
        got = _sha256(Path(tmp))
        if got != sha:
            raise DataError(f"downloaded {name} has sha256 {got}, expected {sha}; try again")
        os.replace(tmp, dest)
    except OSError as e:
        raise DataError(f"cannot download {base_url + name} ({e}); copy the file by hand") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def load_e2e(root: str | Path, split: E2ESplit, download: bool = False) -> list[tuple[str, str]]:
    """The (mr, ref) rows of an E2E split, downloading it first when asked and missing."""
    path = e2e_path(root, split)
    if not path.is_file() and download:
        path = download_e2e(root, split)
    return read_e2e_csv(path)


# ----------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class TokenDataset:
    """A tokenized split in memory: the `x`, `y`, `len` interface the engines use."""

    x: Tensor  # (N, T) int64 input ids, right-padded with the pad id
    y: Tensor  # (N, T) int64 next-token targets, IGNORE_INDEX where nothing is predicted
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        assert self.x.shape == self.y.shape and self.x.ndim == 2, (
            f"x and y must both be (N, T), got {tuple(self.x.shape)} and {tuple(self.y.shape)}"
        )
        assert self.x.dtype == self.y.dtype == torch.int64, "token ids and targets are int64"

    def __len__(self) -> int:
        return len(self.y)


def prompt_text(mr: str) -> str:
    return mr + SEPARATOR


def encode_pairs(
    pairs: Sequence[tuple[str, str]], tokenizer: Tokenizer, max_length: int, pad_id: int
) -> TokenDataset:
    """Tokenize (mr, ref) pairs into a right-padded TokenDataset.

    The prompt and the reference are tokenized separately, so the prompt/target boundary is a
    token boundary whatever the tokenizer. A sample longer than `max_length + 1` tokens is cut
    at the right; one left without any target token is dropped.
    """
    eos = tokenizer.eos_token_id
    rows: list[tuple[list[int], int]] = []  # (ids, prompt length)
    dropped = 0
    for mr, ref in pairs:
        prompt = tokenizer.encode(prompt_text(mr))
        target = tokenizer.encode(" " + ref, add_special_tokens=False)
        ids = (prompt + target + ([eos] if eos is not None else []))[: max_length + 1]
        if len(ids) <= len(prompt):
            dropped += 1
            continue
        rows.append((ids, len(prompt)))
    if dropped:
        logger.warning("dropped %d E2E samples whose prompt fills max_length", dropped)
    if not rows:
        raise DataError(f"no E2E sample fits max_length = {max_length}; raise data.max_length")
    t = max(len(ids) for ids, _ in rows) - 1
    x = torch.full((len(rows), t), pad_id, dtype=torch.int64)
    y = torch.full((len(rows), t), IGNORE_INDEX, dtype=torch.int64)
    for i, (ids, p) in enumerate(rows):
        seq = torch.tensor(ids, dtype=torch.int64)
        n = len(ids) - 1
        x[i, :n] = seq[:-1]
        # Position j predicts token j + 1; only reference tokens (index >= p) are targets.
        y[i, p - 1 : n] = seq[p:]
    return TokenDataset(x, y)


def pad_id_of(tokenizer: Any) -> int:
    """The id used for padding: the tokenizer's pad token, else its end token, else 0."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0
