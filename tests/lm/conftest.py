"""Tiny GPT-2 and Llama language-model tasks: random weights from config objects, no downloads."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from heronsfl.config import RunConfig
from heronsfl.lm.e2e import ByteTokenizer, TokenDataset, encode_pairs
from heronsfl.lm.tasks import LMPreset, lm_task
from heronsfl.registry import with_overrides
from heronsfl.tasks import TASKS

# The shared offline data, seen from the repository root as ../shared/data.
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
E2E_DIR = SHARED / "e2e"

VOCAB = 260  # the byte tokenizer's 257 ids fit


def tiny_gpt2() -> Any:
    from transformers import GPT2Config

    return GPT2Config(n_layer=4, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=512,
                      bos_token_id=256, eos_token_id=256)  # fmt: skip


def tiny_llama() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(num_hidden_layers=4, hidden_size=32, intermediate_size=64,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                       max_position_embeddings=512, bos_token_id=256, eos_token_id=256,
                       pad_token_id=256)  # fmt: skip


# E2E-shaped pairs, short enough for a 128-position model in bytes.
PAIRS = [
    (f"name[{n}], food[{f}]", f"{n} serves {f} food.")
    for n in ("Aromi", "Zizzi", "Cotto", "Wildwood", "Loch Fyne", "Eagle")
    for f in ("Thai", "French", "Indian")
]


def _tiny_load(cfg: RunConfig, split: str) -> TokenDataset:
    pairs = PAIRS if split == "train" else PAIRS[::3]
    return encode_pairs(pairs, ByteTokenizer(), 96, ByteTokenizer.pad_token_id)


def tiny_preset(family: str) -> LMPreset:
    gpt2 = family == "gpt2"
    return LMPreset(
        name=f"tiny-{family}-e2e",
        description=f"tiny random {family} on E2E-shaped pairs",
        model="",  # no weights exist: random init from `arch`, byte tokenizer
        arch=tiny_gpt2 if gpt2 else tiny_llama,
        family=family,
        num_layers=4,
        vocab_size=VOCAB,
        client_blocks=1,
        aux_blocks=1,
        bench_batch=4,
        seq_len=32,
    )


@pytest.fixture(params=["gpt2", "llama"])
def tiny_lm_task(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A tiny LM task registered in TASKS for the test's duration; returns its name."""
    task = dataclasses.replace(lm_task(tiny_preset(request.param)), load=_tiny_load)
    monkeypatch.setitem(TASKS, task.name, task)
    return task.name


def lm_config(task: str, *overrides: str) -> RunConfig:
    return with_overrides(
        RunConfig(),
        [
            f"task={task}",
            "clients=2",
            "rounds=1",
            "train.batch_size=4",
            "train.local_steps=2",
            "train.upload_every=1",
            "train.eval_batch_size=8",
            "comm.wire_dtype=fp32",
            "client_optim.lr=1e-2",
            "server_optim.lr=1e-2",
            "device=cpu",
            *overrides,
        ],
    )


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# The Flower fixture, for deploying a tiny LM run over the in-process grid (test_flower.py).
from tests.engines.flower.conftest import serve  # noqa: E402, F401
