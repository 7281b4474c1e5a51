"""SplitLoRA: split federated LoRA fine-tuning of a language model.

Paper: Lin, Hu, Zhang, Chen, Fang, Chen, Li, Vepakomma, Gao, "SplitLoRA: A Split
Parameter-Efficient Fine-Tuning Framework for Large Language Models" (2024, arXiv 2407.00952),
Section III (the SFL training workflow). It is SFLV2 with LoRA: per batch, a client uploads the
activations at the cut, the single main server does forward, backward and a step on its own LoRA
adapters and returns dLoss/d activations, and the client back-propagates them into its LoRA
adapters; clients take turns on the one server model. The base weights stay frozen on both
sides, so only LoRA tensors train, and only the client's LoRA tensors are averaged by the
Fed-Server (the model's state is its adapters: see heronsfl/lm/hf_split.py).

All of that is SFLV2's code applied to a model whose only trainable parameters are LoRA
adapters, so this class adds nothing but its name.

Deviations from the paper's code (FDU-INC/Split_LoRA):
- The Fed-Server averages once per round (every h local steps per client), not every 100
  global steps.
- No label smoothing, LoRA dropout or learning-rate schedule; one persistent server optimizer.
- The client does not send its attention keys/values ("presents") to the server: the server's
  blocks attend within their own hidden states, as in the unsplit model.
"""

from __future__ import annotations

from typing import ClassVar

from heronsfl.algorithms.sflv2 import SFLV2


class SplitLoRA(SFLV2):
    name: ClassVar[str] = "splitlora"
    summary: ClassVar[str] = "SFLV2 on a LoRA model: cut gradients every batch, LoRA averaged"
    supports_nopeek: ClassVar[bool] = False  # token ids: no input geometry to decorrelate from
    requires: ClassVar[frozenset[str]] = frozenset({"lora"})  # on a plain CNN it is just SFLV2
