"""Tasks: a network (as named stages) plus its dataset, preprocessing and paper split.

A new task is one `Task(...)` entry in TASKS.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from heronsfl.config import RunConfig
from heronsfl.data.datasets import (
    CIFAR10_NORMALIZE,
    DIGITS_NORMALIZE,
    ArrayDataset,
    Normalize,
    augment_crop_flip,
    load_cifar10,
    load_digits,
)
from heronsfl.errors import ConfigError
from heronsfl.models.cnn import DIGITS_CUTS, digits_cnn_stages
from heronsfl.models.resnet import RESNET18_CUTS, resnet18_stages
from heronsfl.models.split import SplitModel, build_aux_head, count_params, split_stages
from heronsfl.rng import derive_seed, generator

Split = Literal["train", "test"]


@dataclass(frozen=True)
class Task:
    """What a workload needs: stages to cut, where the paper cuts, and how to get its data."""

    name: str
    description: str
    stages: Callable[[int, int, str], OrderedDict[str, nn.Module]]  # (classes, width, stem)
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
    # Scores computed once after the last round (E2E generation metrics), into summary.json.
    final_metrics: Callable[[Any], dict[str, float]] | None = None

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


def _cache_dir(cfg: RunConfig) -> Path:
    """data.cache_dir, else $XDG_CACHE_HOME/heronsfl (~/.cache/heronsfl): never beside the data,
    which may be a read-only shared copy."""
    if cfg.data.cache_dir:
        return Path(cfg.data.cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "heronsfl"


def _load_cifar10(cfg: RunConfig, split: Split) -> ArrayDataset:
    return load_cifar10(cfg.data.root, split, download=cfg.data.download, cache_dir=_cache_dir(cfg))


def _load_digits(cfg: RunConfig, split: Split) -> ArrayDataset:
    return load_digits(split)


TASKS: dict[str, Task] = {
    "resnet18-cifar10": Task(
        name="resnet18-cifar10",
        description="CIFAR-style ResNet-18 from scratch on CIFAR-10 (paper split: after layer1.0)",
        stages=lambda n, w, stem: resnet18_stages(n, w, stem=stem),
        cuts=RESNET18_CUTS,
        paper_cut="layer1.0",
        default_width=64,
        input_shape=(3, 32, 32),
        num_classes=10,
        load=_load_cifar10,
        normalize=CIFAR10_NORMALIZE,
        augment=True,
    ),
    "cnn-digits": Task(
        name="cnn-digits",
        description="small CNN on scikit-learn's bundled 8x8 digits (offline, seconds per run)",
        stages=lambda n, w, stem: digits_cnn_stages(n, w),
        cuts=DIGITS_CUTS,
        paper_cut="block1",
        default_width=16,
        input_shape=(1, 8, 8),
        num_classes=10,
        load=_load_digits,
        normalize=DIGITS_NORMALIZE,
        augment=False,
    ),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def build_split_model(cfg: RunConfig, with_aux: bool = True, whole: bool = False) -> SplitModel:
    """The task's network cut at cfg.model.cut, initialised from the run seed.

    Initialisation draws from a forked global RNG seeded from the seed tree, so building a model
    never disturbs the caller's random state and the same seed always gives the same weights.
    """
    task = get_task(cfg.task)
    if task.build is not None:
        if whole:
            raise ConfigError(f"task {task.name!r} has no whole-model variant (fedavg, mezo) yet")
        return _frozen(cfg, task.build(cfg, with_aux))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        stages = task.stages(
            task.num_classes, cfg.model.width or task.default_width, cfg.model.stem
        )
        # Whole-model algorithms (FedAvg, MeZO) cut after the last stage: the client has it all.
        cut = list(stages)[-1] if whole else (cfg.model.cut or task.paper_cut)
        client, server, cut_shape = split_stages(stages, cut, task.input_shape)
        aux = build_aux_head(cfg.model.aux, cut_shape, task.num_classes) if with_aux else None
    return _frozen(cfg, SplitModel(client, server, aux, cut, cut_shape))


def physical_memory_bytes() -> int | None:
    """This machine's RAM (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


# The least a first-order trainer keeps per parameter: fp32 weights, gradients and Adam's two
# moments (the simulator keeps more: the Fed-Server's master copy and each client's copy).
TRAINING_BYTES_PER_PARAM = 16


def size_problems(cfg: RunConfig, batch_size: int | None = None) -> list[str]:
    """Sizes that cannot fit in this machine's memory, found before anything is allocated.

    The network is built on PyTorch's meta device (shapes only, no storage) to count its
    parameters and find the activations at the cut; `batch_size` (bench, which materialises a
    whole batch) adds the batch's inputs and cut activations in fp32. A run's batch is capped by
    each client's data (data/sampler.py), so it is not counted here.
    """
    task = get_task(cfg.task)
    total = physical_memory_bytes()
    if task.build is not None or total is None:  # LM sizes come from the model's checkpoint
        return []
    width = cfg.model.width or task.default_width
    try:
        with torch.device("meta"):
            model = build_split_model(cfg, with_aux=True)
    except (RuntimeError, ValueError, OverflowError, MemoryError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:120]
        return [f"model.width = {width}: the model cannot be built ({first}); lower it"]
    params = sum(count_params(m) for m in (model.client, model.server, model.aux) if m is not None)
    need = params * TRAINING_BYTES_PER_PARAM
    problems = []
    gb = 1e9
    if need > total:
        problems.append(
            f"model.width = {width}: {params:,} parameters need at least {need / gb:,.1f} GB to "
            f"train (weights, gradients, Adam state), more than this machine's "
            f"{total / gb:.1f} GB; lower model.width"
        )
    if batch_size is not None:
        per_sample = math.prod(task.input_shape) + math.prod(model.cut_shape)
        batch_bytes = batch_size * per_sample * 4
        if batch_bytes > total:
            problems.append(
                f"batch size {batch_size}: its inputs and cut activations alone need "
                f"{batch_bytes / gb:,.1f} GB (fp32), more than this machine's {total / gb:.1f} GB; "
                "lower the batch size"
            )
    return problems


def _frozen(cfg: RunConfig, model: SplitModel) -> SplitModel:
    """model.freeze_client: the client sub-model keeps its initial weights (the control run)."""
    if cfg.model.freeze_client:
        model.client.requires_grad_(False)
    return model


def load_datasets(cfg: RunConfig, split: Split) -> ArrayDataset:
    """The task's `split`, honouring data.synthetic and the subset knobs."""
    task = get_task(cfg.task)
    if cfg.data.synthetic:
        n = cfg.data.synthetic if split == "train" else max(cfg.data.synthetic // 4, 1)
        return _synthetic(task, n, cfg.seed, split)
    ds = task.load(cfg, split)
    limit = cfg.data.train_subset if split == "train" else cfg.data.test_subset
    return _subset(ds, limit, derive_seed(cfg.seed, "subset", split)) if limit else ds


def _subset(ds: ArrayDataset, n: int, seed: int) -> ArrayDataset:
    """A seeded subset of any dataset dataclass with `x` and `y` (images or token ids)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[: min(n, len(ds))].sort().values
    return dataclasses.replace(ds, x=ds.x[idx], y=ds.y[idx])


def _synthetic(task: Task, n: int, seed: int, split: str) -> ArrayDataset:
    """Random uint8 images with random labels: costs do not depend on values."""
    x, y = task.random_samples(n, generator(seed, "synthetic", split))
    return ArrayDataset(x=x, y=y, classes=tuple(str(i) for i in range(task.num_classes)))


from heronsfl.lm.tasks import lm_tasks  # noqa: E402  (language-model tasks, issue 4)

TASKS.update(lm_tasks())
