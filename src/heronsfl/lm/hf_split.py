"""Any Hugging Face causal LM cut at a block boundary, with LoRA (PEFT) on every part.

    client = token (+ position) embeddings + blocks[:n]          input_ids (B, T) -> (B, T, C)
    server = blocks[n:] + final norm + LM head                   (B, T, C) -> logits (B, T, V)
    aux    = copies of blocks[n:n+m] + final norm + LM head      (B, T, C) -> logits (B, T, V)

The parts are thin `nn.Module`s around the model's own submodules (no transformer is written
here): the client and server hold the very modules of one PEFT-wrapped model, so that model
(`LMSplitModel.full`) still generates with the trained weights. The aux head starts as a copy of
the server's first m blocks and final norm; its unembedding is the frozen (tied) token embedding.

What crosses the cut is the hidden state only. With right padding and causal attention a real
token never attends to a padding token, so no attention mask needs to travel: every part
rebuilds position ids, the causal mask and rotary embeddings from the sequence length alone.
A 2-D `attention_mask` can still be passed to every part (left padding, tests).

Supported families: GPT-2 (`transformer.h`, learned positions) and the Llama family
(`model.layers`, rotary positions: Llama, Mistral, Qwen2, SmolLM, ...).

Only adapter tensors travel: `state_dict()` of every part holds its trainable (LoRA) tensors
only, and `load_state_dict` takes exactly those. The frozen base is rebuilt from the same
weights by every party and never sent.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.module import _IncompatibleKeys

from heronsfl.lm.e2e import IGNORE_INDEX
from heronsfl.models.split import SplitModel

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------- the parts


class AdapterStateMixin(nn.Module):
    """`state_dict()` = the trainable tensors only (LoRA); the frozen base never travels."""

    def adapter_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def state_dict(  # type: ignore[override]
        self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False
    ) -> dict[str, Any]:
        full = super().state_dict(keep_vars=keep_vars)
        out: dict[str, Any] = OrderedDict((prefix + n, full[n]) for n in self.adapter_names())
        if destination is not None:
            destination.update(out)
            return destination  # type: ignore[no-any-return]
        return out

    def load_state_dict(  # type: ignore[override]
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> _IncompatibleKeys:
        expected = set(self.adapter_names())
        missing = sorted(expected - state_dict.keys())
        unexpected = sorted(state_dict.keys() - expected)
        if strict and (missing or unexpected):
            raise RuntimeError(
                f"adapter state mismatch for {type(self).__name__}: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]} (only trainable LoRA tensors travel)"
            )
        super().load_state_dict(
            {k: v for k, v in state_dict.items() if k in expected}, strict=False, assign=assign
        )
        return _IncompatibleKeys(missing, unexpected)

    def full_state_dict(self) -> dict[str, Tensor]:
        """Every tensor, frozen base included (checkpoints; never sent each round)."""
        return nn.Module.state_dict(self)


class Embeddings(nn.Module):
    """Token embedding, plus learned positions and dropout where the family has them (GPT-2)."""

    def __init__(
        self, token: nn.Embedding, position: nn.Embedding | None, dropout: nn.Module | None
    ) -> None:
        super().__init__()
        self.token = token
        self.position = position
        self.dropout = dropout

    def forward(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        h = self.token(input_ids)  # (B, T, C)
        if self.position is not None:
            h = h + self.position(position_ids)
        return h if self.dropout is None else self.dropout(h)


class _Blocks(AdapterStateMixin):
    """Runs a slice of decoder blocks, rebuilding the per-sequence context they need."""

    def __init__(self, config: Any, blocks: list[nn.Module], rotary: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.rotary = rotary
        self._config = config  # HF config: attention implementation and mask type; not a module

    def _run_blocks(self, h: Tensor, attention_mask: Tensor | None) -> Tensor:
        from transformers.masking_utils import create_causal_mask

        position_ids = torch.arange(h.shape[1], device=h.device).unsqueeze(0)  # (1, T)
        # None under SDPA without padding: the kernel's own causal flag, no (T, T) mask.
        mask = create_causal_mask(
            config=self._config,
            inputs_embeds=h,
            attention_mask=attention_mask,
            past_key_values=None,
            position_ids=position_ids,
        )
        extra: dict[str, Any] = {}
        if self.rotary is not None:
            extra["position_embeddings"] = self.rotary(h, position_ids=position_ids)
        for block in self.blocks:
            h = block(h, attention_mask=mask, position_ids=position_ids, **extra)
        return h


class LMClient(_Blocks):
    """Client sub-model: input_ids (B, T) int64 -> activations (B, T, C) at the cut."""

    def __init__(
        self, config: Any, embed: Embeddings, blocks: list[nn.Module], rotary: nn.Module | None
    ) -> None:
        super().__init__(config, blocks, rotary)
        self.embed = embed

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        return self._run_blocks(self.embed(input_ids, position_ids), attention_mask)


class LMHead(_Blocks):
    """Server sub-model or aux head: activations (B, T, C) -> fp32 logits (B, T, V)."""

    def __init__(
        self,
        config: Any,
        blocks: list[nn.Module],
        norm: nn.Module,
        lm_head: nn.Module,
        rotary: nn.Module | None,
    ) -> None:
        super().__init__(config, blocks, rotary)
        self.norm = norm
        self.lm_head = lm_head

    def forward(self, activations: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        # The server receives fp32 (cast up from the wire); the blocks run in the base dtype.
        h = activations.to(self.norm.weight.dtype)
        h = self.norm(self._run_blocks(h, attention_mask))
        return self.lm_head(h).float()  # (B, T, V); the loss is taken in fp32

    def loss(self, activations: Tensor, targets: Tensor) -> Tensor:
        """Equals task_loss(self(activations), targets), but only the K positions that have a
        target go through the final norm and the unembedding: the (B, T, V) logits, the
        largest tensor of a step, shrink to (K, V) (E2E padded to 512: K is ~5% of B*T)."""
        h = self._run_blocks(activations.to(self.norm.weight.dtype), None)  # (B, T, C)
        valid = targets != IGNORE_INDEX  # (B, T); boolean indexing below syncs with the host
        logits = self.lm_head(self.norm(h[valid])).float()  # (K, V)
        return F.cross_entropy(logits, targets[valid])


@dataclass
class LMSplitModel(SplitModel):
    """A SplitModel that also keeps the whole PEFT model its client and server are cut from."""

    full: nn.Module | None = None  # shares the client's and server's modules: generation
    num_layers: int = 0


# ----------------------------------------------------------------------------- loading


def is_gguf(source: str) -> bool:
    return source.lower().endswith(".gguf")


def load_config(source: str) -> Any:
    """The architecture of `source` (hub id, local directory or .gguf file), no weights."""
    from transformers import AutoConfig

    if is_gguf(source):
        path = Path(source)
        return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    return AutoConfig.from_pretrained(source)


def load_causal_lm(
    source: str, *, pretrained: bool, config: Any | None = None, dtype: str = "fp32"
) -> nn.Module:
    """A causal LM from a hub id, a local directory or a .gguf file (dequantized by transformers
    with the `gguf` package), or, with `pretrained=False`, the same architecture randomly
    initialised (from `config` when given, so nothing is downloaded)."""
    from transformers import AutoModelForCausalLM

    torch_dtype = DTYPES[dtype]
    if not pretrained:
        cfg = config if config is not None else load_config(source)
        return AutoModelForCausalLM.from_config(cfg, dtype=torch_dtype)
    if is_gguf(source):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"no GGUF file at '{source}'; pass an existing .gguf path")
        return AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch_dtype
        )
    return AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)


def load_tokenizer(source: str) -> Any:
    """The tokenizer that ships with `source` (hub id, local directory or .gguf file)."""
    from transformers import AutoTokenizer

    if is_gguf(source):
        path = Path(source)
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return AutoTokenizer.from_pretrained(source)


def dropout_to_zero(model: nn.Module) -> None:
    """No dropout anywhere: ZO needs two forwards that differ only by the perturbation, and
    dropout would draw from the global RNG (runs must depend on the seed tree alone)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "attention_dropout", None), float):
            m.attention_dropout = 0.0


# ----------------------------------------------------------------------------- splitting


@dataclass
class _Parts:
    """Where one family keeps its pieces (module references into the model)."""

    embed: Embeddings
    blocks: nn.ModuleList
    norm: nn.Module
    lm_head: nn.Module
    rotary: nn.Module | None
    block_prefix: str  # HF name of the block list: cut names are f"{block_prefix}.{i}"


def _parts(model: nn.Module) -> _Parts:
    """The pieces of a GPT-2 or Llama-family causal LM (a PEFT wrapper is looked through)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    lm_head = base.get_output_embeddings()
    tf = getattr(base, "transformer", None)
    if tf is not None and hasattr(tf, "h"):  # GPT-2: learned absolute positions
        return _Parts(Embeddings(tf.wte, tf.wpe, tf.drop), tf.h, tf.ln_f, lm_head, None, "h")
    body = getattr(base, "model", None)
    if body is not None and hasattr(body, "layers") and hasattr(body, "embed_tokens"):
        rotary = getattr(body, "rotary_emb", None)  # Llama family: rotary positions
        return _Parts(Embeddings(body.embed_tokens, None, None), body.layers, body.norm, lm_head,
                      rotary, "layers")  # fmt: skip
    raise ValueError(
        f"cannot split {type(base).__name__}: supported are GPT-2 (transformer.h) and the "
        "Llama family (model.layers); pass a model of one of these families"
    )


def block_prefix(config: Any) -> str:
    """'h' for GPT-2 configs, 'layers' for the Llama family (the HF name of the block list)."""
    return "h" if getattr(config, "model_type", "") == "gpt2" else "layers"


def cut_names(config: Any) -> tuple[str, ...]:
    """Every cut of a model: after block i, named by that block's HF path ('h.2', 'layers.5')."""
    n = config.num_hidden_layers
    return tuple(f"{block_prefix(config)}.{i}" for i in range(n - 1))


def cut_index(cut: str, num_layers: int) -> int:
    """'h.2' -> 3 client blocks. Raises ValueError for a cut that is not a block boundary."""
    try:
        last = int(cut.rsplit(".", 1)[-1])
    except ValueError:
        last = -1
    if not 0 <= last < num_layers - 1:
        raise ValueError(
            f"cut {cut!r} is not a block boundary of a {num_layers}-block model; "
            f"use '<blocks>.<i>' with 0 <= i < {num_layers - 1} (e.g. 'h.2': 3 client blocks)"
        )
    return last + 1


def lora_config(model: nn.Module, rank: int, alpha: float) -> Any:
    """LoRA on PEFT's default projections for the family (GPT-2: c_attn; Llama: q_proj, v_proj),
    as in the LoRA paper's attention-only adaptation."""
    from peft import LoraConfig

    model_type = getattr(getattr(model, "config", None), "model_type", "")
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=model_type == "gpt2",  # GPT-2's Conv1D stores weights transposed
    )


def split_causal_lm(
    model: nn.Module,
    client_blocks: int,
    aux_blocks: int | None,
    lora_rank: int,
    lora_alpha: float = 32.0,
    seq_len: int = 0,
) -> LMSplitModel:
    """Wrap `model` with LoRA and cut it after `client_blocks` blocks.

    Args:
        model: A GPT-2 or Llama-family `...ForCausalLM` (not yet PEFT-wrapped).
        client_blocks: Blocks on the client (the paper's "cut after block n").
        aux_blocks: Blocks in the aux head (0..3 in the paper), copied from the server's first
            ones; None builds no aux head.
        lora_rank: LoRA rank r on every part; the base weights are frozen.
        lora_alpha: LoRA scaling numerator (scale = alpha / r); 32 as in LoRA's E2E recipe.
        seq_len: Sequence length T reported in `cut_shape` (T, C) (the padded length).

    Returns:
        The split model; `full` is the PEFT model sharing the client's and server's modules.
    """
    from peft import get_peft_model

    dropout_to_zero(model)
    num_layers = model.config.num_hidden_layers
    if not 0 < client_blocks < num_layers:
        raise ValueError(f"client_blocks = {client_blocks} must be in [1, {num_layers - 1}]")
    # Adapters stay fp32 whatever the base dtype (PEFT's autocast_adapter_dtype): ZO perturbs
    # and Adam updates them in full precision.
    full = get_peft_model(model, lora_config(model, lora_rank, lora_alpha))
    p = _parts(full)
    config = full.get_base_model().config
    blocks = list(p.blocks)
    client = LMClient(config, p.embed, blocks[:client_blocks], p.rotary)
    server = LMHead(config, blocks[client_blocks:], p.norm, p.lm_head, p.rotary)
    aux = None
    if aux_blocks is not None:
        if not 0 <= aux_blocks <= num_layers - client_blocks:
            raise ValueError(
                f"aux_blocks = {aux_blocks} must be in [0, {num_layers - client_blocks}] "
                f"(the server has {num_layers - client_blocks} blocks to copy)"
            )
        # Copies of the server's first m blocks (LoRA included) and final norm; the
        # unembedding is the frozen output embedding itself (tied to the token embedding in
        # GPT-2 and SmolLM2), shared rather than copied: it never changes.
        aux = LMHead(
            config,
            [copy.deepcopy(b) for b in blocks[client_blocks : client_blocks + aux_blocks]],
            copy.deepcopy(p.norm),
            p.lm_head,
            p.rotary,
        )
    hidden = config.hidden_size
    return LMSplitModel(
        client=client,
        server=server,
        aux=aux,
        cut=f"{p.block_prefix}.{client_blocks - 1}",
        cut_shape=(seq_len, hidden),  # (T, C) of one sample at the cut
        full=full,
        num_layers=num_layers,
    )


def lora_parameters(module: nn.Module) -> dict[str, Tensor]:
    """The LoRA tensors of `module` by name (what trains and travels)."""
    return {n: p for n, p in module.named_parameters() if "lora_" in n}
