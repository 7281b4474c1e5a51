"""Generation for the E2E test MRs with the trained split model, and its scores.

The client and server parts are cut from one PEFT model and hold its very modules, so once the
Fed-Server's global client adapters are loaded, that model *is* client followed by server
(tests check the logits are equal) and Hugging Face's `generate` runs it with a KV cache.

Decoding is greedy (the LoRA/SplitLoRA papers use beam search with 10 beams, length penalty 0.8
and no-repeat 4-grams: far too slow on a CPU, and it changes scores by a few BLEU points).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from heronsfl.lm.e2e import prompt_text

logger = logging.getLogger(__name__)


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: Any,
    mrs: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    pad_id: int = 0,
) -> list[str]:
    """Greedy continuation of `"{mr} ->"` for every MR, up to the end token.

    Prompts are left-padded within a batch (with an attention mask), so every prompt ends
    where generation starts.
    """
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    out: list[str] = []
    for start in range(0, len(mrs), batch_size):
        prompts = [tokenizer.encode(prompt_text(mr)) for mr in mrs[start : start + batch_size]]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=eos,
            pad_token_id=pad_id,
        )  # (B, width + new)
        for row in gen[:, width:].tolist():
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            out.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    model.train(was_training)
    return out
