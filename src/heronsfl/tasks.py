"""Tasks: a network (as named stages) plus its dataset, preprocessing and paper split.

A new task is one `Task(...)` entry in TASKS.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import torch

from heronsfl.config import RunConfig
from heronsfl.data.datasets import (
    CIFAR10_NORMALIZE,
    DIGITS_NORMALIZE,
    ArrayDataset,
    load_cifar10,
    load_digits,
)
from heronsfl.errors import ConfigError
from heronsfl.lm.tasks import lm_tasks
from heronsfl.models.cnn import DIGITS_CUTS, digits_cnn_stages
from heronsfl.models.resnet import RESNET18_CUTS, resnet18_stages
from heronsfl.models.split import (
    SplitModel,
    build_aux_head,
    count_params,
    kaiming_init,
    split_stages,
)
from heronsfl.rng import INIT_LOCK, derive_seed, generator
from heronsfl.task import Split, Task

__all__ = [
    "TASKS",
    "Split",
    "Task",
    "build_split_model",
    "check_config",
    "get_task",
    "load_datasets",
]


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


def check_config(cfg: RunConfig) -> list[str]:
    """The config's task and cut, checked against this registry."""
    if cfg.task not in TASKS:
        return [f"unknown task {cfg.task!r}; known: {', '.join(sorted(TASKS))}"]
    if cfg.model.init != "default" and TASKS[cfg.task].build is not None:
        return [
            f"model.init = {cfg.model.init!r} re-initialises the conv nets of the image tasks; "
            f"task {cfg.task!r} builds its own model; use model.init=default"
        ]
    if cfg.model.cut and cfg.model.cut not in TASKS[cfg.task].cuts:
        return [
            f"model.cut = {cfg.model.cut!r} does not exist in task {cfg.task!r}; "
            f"choose one of: {', '.join(TASKS[cfg.task].cuts)}"
        ]
    return []


def build_split_model(cfg: RunConfig, with_aux: bool = True, whole: bool = False) -> SplitModel:
    """The task's network cut at cfg.model.cut, initialised from the run seed.

    Initialisation draws from a forked global RNG seeded from the seed tree, so building a model
    never disturbs the caller's random state and the same seed always gives the same weights.
    The global RNG is the process's: one build at a time (clients served by threads).
    """
    task = get_task(cfg.task)
    if task.build is not None:
        if whole:
            raise ConfigError(f"task {task.name!r} has no whole-model variant (fedavg, mezo) yet")
        return _frozen(cfg, task.build(cfg, with_aux))
    assert task.stages is not None, f"task {task.name!r} has neither stages nor build"
    with INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        stages = task.stages(
            task.num_classes, cfg.model.width or task.default_width, cfg.model.stem
        )
        # Whole-model algorithms (FedAvg, MeZO) cut after the last stage: the client has it all.
        cut = list(stages)[-1] if whole else (cfg.model.cut or task.paper_cut)
        client, server, cut_shape = split_stages(stages, cut, task.input_shape)
        aux = build_aux_head(cfg.model.aux, cut_shape, task.num_classes) if with_aux else None
        if cfg.model.init == "kaiming":
            kaiming_init(client, server, aux)
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


TASKS.update(lm_tasks())  # the language-model tasks (lm/tasks.py)
