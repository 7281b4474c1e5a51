"""The task: a network plus its dataset, preprocessing and paper split, as engines see it.

One dataclass serves the vision tasks (a list of named stages, cut by `split_stages`) and the
language-model tasks (their own `build`, E2E `final_metrics`); the registry is tasks.TASKS.
Kept apart from the registry so task modules (lm/tasks.py) import it without a circle.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from heronsfl.config import RunConfig
from heronsfl.data.datasets import ArrayDataset, Normalize, augment_crop_flip
from heronsfl.models.split import SplitModel

Split = Literal["train", "test"]


@dataclass(frozen=True)
class Task:
    """What a workload needs: stages to cut, where the paper cuts, and how to get its data."""

    name: str
    description: str
    # (classes, width, stem) -> named stages to cut; None: the task builds its model (`build`)
    stages: Callable[[int, int, str], OrderedDict[str, nn.Module]] | None
    cuts: tuple[str, ...]
    paper_cut: str
    default_width: int
    input_shape: tuple[int, ...]  # one sample, (C, H, W)
    num_classes: int
    load: Callable[[RunConfig, Split], ArrayDataset]
    normalize: Normalize | None  # uint8 images -> normalized floats; None: inputs pass as they are
    augment: bool  # random crop + flip (natural images), off for digits
    # Tasks whose network is not a list of stages (e.g. a Hugging Face LM) build it themselves.
    build: Callable[[RunConfig, bool], SplitModel] | None = None
    reports_perplexity: bool = False  # language models: test/perplexity = exp(test/loss)
    paper_batch_size: int = 256  # the batch of the paper's cost table (`heronsfl bench`)
    # Scores computed once after the last round (E2E generation metrics), into summary.json,
    # from the config, the template model and the Fed-Server's final global state.
    final_metrics: Callable[[RunConfig, SplitModel, dict[str, Tensor]], dict[str, float]] | None = (
        None
    )

    # Tasks whose inputs are not uint8 images (token ids) draw their own random batches.
    random_inputs: Callable[[int, torch.Generator], tuple[Tensor, Tensor]] | None = None
    # Capabilities algorithms may require (SplitAlgorithm.requires): "whole-model" (the network
    # can be handed whole to a client: FedAvg, MeZO), "lora" (LoRA adapters are what trains),
    # "language-model".
    provides: frozenset[str] = frozenset({"whole-model"})

    def random_samples(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """Random uint8 images of the task's shape with random labels (before preprocessing)."""
        x = torch.randint(0, 256, (n, *self.input_shape), generator=gen, dtype=torch.uint8)
        y = torch.randint(0, self.num_classes, (n,), generator=gen)
        return x, y

    def random_batch(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """Random model inputs and targets of the task's shapes: costs do not depend on values."""
        if self.random_inputs is not None:
            return self.random_inputs(n, gen)
        x, y = self.random_samples(n, gen)
        return self.preprocess(x, False, False, None), y

    def preprocess(
        self, x: Tensor, train: bool, augment: bool, gen: torch.Generator | None
    ) -> Tensor:
        """uint8 batch -> normalized float batch, augmented when training."""
        if train and augment and self.augment:
            assert gen is not None, "augmentation needs the client's generator"
            x = augment_crop_flip(x, gen)
        return x if self.normalize is None else self.normalize(x)
