from __future__ import annotations

import pytest
import torch

from heronsfl.lm.hf_split import cut_index, cut_names, lora_parameters, split_causal_lm
from tests.lm.conftest import VOCAB, tiny_gpt2, tiny_llama


def _model(family: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    cfg = tiny_gpt2() if family == "gpt2" else tiny_llama()
    return AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()


def _perturb_lora(module: torch.nn.Module) -> None:
    # LoRA's B starts at zero; make the adapters matter so equality tests mean something.
    with torch.no_grad():
        for p in lora_parameters(module).values():
            p.normal_(0, 0.1)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_split_forward_equals_unsplit_with_attention_mask(family: str) -> None:
    # Prepare: a batch with left-padded rows, so the mask changes every position's output
    ids = torch.randint(0, VOCAB, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, :4] = 0
    mask[2, :7] = 0
    sm = split_causal_lm(_model(family), client_blocks=2, aux_blocks=1, lora_rank=4)
    _perturb_lora(sm.full)
    # Execute
    with torch.no_grad():
        split = sm.server(sm.client(ids, mask), mask)
        whole = sm.full(input_ids=ids, attention_mask=mask).logits
    # Assert
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_right_padding_needs_no_mask_on_the_wire(family: str) -> None:
    """Causal attention never looks right: real positions match the masked unsplit model."""
    ids = torch.randint(0, VOCAB, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    sm = split_causal_lm(_model(family), client_blocks=1, aux_blocks=None, lora_rank=4)
    _perturb_lora(sm.full)
    with torch.no_grad():
        split = sm.server(sm.client(ids))  # no mask anywhere
        whole = sm.full(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(split[real], whole[real], rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("m", [0, 1, 2, 3])
def test_aux_starts_as_the_servers_first_blocks(family: str, m: int) -> None:
    sm = split_causal_lm(_model(family), client_blocks=1, aux_blocks=m, lora_rank=4)
    assert sm.aux is not None and len(sm.aux.blocks) == m
    for i in range(m):
        aux_state = sm.aux.blocks[i].state_dict()
        server_state = sm.server.blocks[i].state_dict()
        assert aux_state.keys() == server_state.keys()
        for k in aux_state:
            torch.testing.assert_close(aux_state[k], server_state[k], rtol=0, atol=0)
        assert sm.aux.blocks[i] is not sm.server.blocks[i]  # a copy, trained on its own
    torch.testing.assert_close(sm.aux.norm.weight, sm.server.norm.weight, rtol=0, atol=0)
    # The unembedding is the model's frozen output embedding itself (tied in GPT-2).
    assert sm.aux.lm_head is sm.server.lm_head
    if family == "gpt2":
        assert sm.aux.lm_head.weight is sm.client.embed.token.weight


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_only_lora_travels_and_trains(family: str) -> None:
    sm = split_causal_lm(_model(family), client_blocks=2, aux_blocks=1, lora_rank=4)
    for part in (sm.client, sm.server, sm.aux):
        state = part.state_dict()
        trainable = {n for n, p in part.named_parameters() if p.requires_grad}
        assert state and set(state) == trainable and all("lora_" in k for k in state)
        part.load_state_dict({k: v.clone() for k, v in state.items()})  # round trip, strict
    with pytest.raises(RuntimeError, match="adapter state mismatch"):
        sm.client.load_state_dict({})


def test_lora_stays_fp32_on_a_bf16_base() -> None:
    sm = split_causal_lm(_model("llama", torch.bfloat16), 2, 1, lora_rank=4)
    assert {p.dtype for p in lora_parameters(sm.full).values()} == {torch.float32}
    base = [p for n, p in sm.full.named_parameters() if "lora_" not in n]
    assert {p.dtype for p in base} == {torch.bfloat16}
    with torch.no_grad():
        logits = sm.aux(sm.client(torch.randint(0, VOCAB, (2, 8))).float())
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_cut_names_and_errors() -> None:
    assert cut_names(tiny_gpt2()) == ("h.0", "h.1", "h.2")
    assert cut_names(tiny_llama())[-1] == "layers.2"
    assert cut_index("h.2", 12) == 3
    with pytest.raises(ValueError, match="not a block boundary"):
        cut_index("h.11", 12)
    with pytest.raises(ValueError, match="aux_blocks"):
        split_causal_lm(_model("gpt2"), client_blocks=3, aux_blocks=2, lora_rank=4)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_head_loss_on_target_positions_equals_the_full_logits_loss(family: str) -> None:
    from heronsfl.algorithms.base import IGNORE_INDEX, task_loss

    sm = split_causal_lm(_model(family), client_blocks=2, aux_blocks=1, lora_rank=4)
    _perturb_lora(sm.full)
    ids = torch.randint(0, VOCAB, (3, 10))
    targets = torch.randint(0, VOCAB, (3, 10))
    targets[:, :4] = IGNORE_INDEX  # prompt
    targets[1, 7:] = IGNORE_INDEX  # padding
    with torch.no_grad():
        acts = sm.client(ids)
        for head in (sm.server, sm.aux):
            torch.testing.assert_close(
                head.loss(acts, targets), task_loss(head(acts), targets), rtol=1e-6, atol=1e-6
            )
