"""Run configuration: one tree of frozen dataclasses, the only place defaults live.

Field names are the TOML keys and the dotted override paths (`zo.mu=1e-3`). Every field carries a
`help` string; `heronsfl validate` and `load_config` collect *all* problems into one ConfigError
before a single tensor is allocated.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from heronsfl.errors import ConfigError

WireDtype = Literal["fp32", "fp16", "bf16"]


def _f(default: Any, help: str, check: Literal[">0", ">=0"] | None = None) -> Any:
    """A config field: its default, its help text and (optionally) its allowed range."""
    return field(default=default, metadata={"help": help, "check": check})


@dataclass(frozen=True)
class TrainConfig:
    """Local schedule of one round (paper symbols h and k)."""

    local_steps: int = _f(
        50, "h: local steps (mini-batches) each client runs per round", check=">0"
    )
    upload_every: int = _f(
        1, "k: a decoupled client uploads activations every k-th local step (k <= h)", check=">0"
    )
    batch_size: int = _f(256, "client mini-batch size (the paper uses 256 on CIFAR-10)", check=">0")
    server_order: Literal["round-robin", "client-by-client"] = _f(
        "round-robin",
        "order in which the main server consumes uploads: interleaved across clients, "
        "or all of one client's uploads before the next client's",
    )
    clients_per_round: int = _f(
        0,
        "partial participation: clients sampled (seeded) each round; 0 = use client_fraction",
        check=">=0",
    )
    client_fraction: float = _f(
        1.0, "partial participation: fraction of clients sampled each round (when count is 0)"
    )
    aggregation: Literal["uniform", "data-size"] = _f(
        "uniform", "Fed-Server weights: 1/N (paper Eq. 8) or proportional to client data size"
    )
    eval_every: int = _f(
        1, "evaluate on the test set every this many rounds (and the last)", check=">0"
    )
    max_comm_bytes: int = _f(
        0,
        "stop after the round in which uplink + downlink bytes reach this budget (0 = none)",
        check=">=0",
    )

    eval_batch_size: int = _f(1000, "batch size for evaluation forwards", check=">0")


@dataclass(frozen=True)
class OptimConfig:
    """An optimizer for one role. ZO clients feed it the gradient estimate g*u."""

    name: Literal["adam", "sgd"] = _f(
        "adam", "adam (paper) or sgd; for a ZO client, sgd is the in-place MeZO update"
    )
    lr: float = _f(1e-4, "learning rate (paper: Adam 1e-4 on both sides)", check=">0")
    momentum: float = _f(0.0, "SGD momentum (FO clients and the server only)", check=">=0")
    weight_decay: float = _f(0.0, "L2 weight decay", check=">=0")


@dataclass(frozen=True)
class ZOConfig:
    """Zeroth-order estimator of a ZO client (HERON-SFL paper Eq. 2; MeZO)."""

    mu: float = _f(1e-3, "mu: perturbation scale of the finite difference", check=">0")
    num_probes: int = _f(1, "q: random directions per step, averaged", check=">0")
    estimator: Literal["one-sided", "central"] = _f(
        "one-sided",
        "one-sided (L(θ+μu)-L(θ))/μ: q+1 forwards (paper Eq. 2); "
        "central (L(θ+μu)-L(θ-μu))/2μ: 2q forwards (MeZO)",
    )
    exchange: Literal["params", "seeds"] = _f(
        "params",
        "what a ZO client uploads each round: its parameters, or its step seeds and scalars "
        "(the Fed-Server replays them; BatchNorm buffers still travel as tensors)",
    )
    distribution: Literal["gaussian", "sphere"] = _f(
        "gaussian", "u ~ N(0, I), or uniform on the sphere of radius sqrt(d) (E[uu^T] = I for both)"
    )


@dataclass(frozen=True)
class FSLSAGEConfig:
    """FSL-SAGE's server-side gradient alignment (Nair et al. 2025)."""

    buffer_size: int = _f(
        1000, "samples of (activations, labels) kept per client (FIFO)", check=">0"
    )
    align_every: int = _f(
        10, "re-fit every client's aux head every this many rounds (l)", check=">0"
    )
    align_epochs: int = _f(1, "passes over the buffer per alignment", check=">0")
    align_lr: float = _f(1e-3, "Adam learning rate of the gradient-matching fit", check=">0")
    align_batch_size: int = _f(
        0,
        "samples per gradient-matching step (the reference code: 1000, one step per pass over "
        "its 1000-sample buffer); 0 = train.batch_size",
        check=">=0",
    )


@dataclass(frozen=True)
class HOSFLConfig:
    """HO-SFL's probes (Chen et al. 2026)."""

    num_probes: int = _f(
        5, "P: shared-seed perturbed forwards per step (paper: 5 for vision)", check=">0"
    )


@dataclass(frozen=True)
class ModelConfig:
    """Where the network is cut and what the client's auxiliary head looks like."""

    cut: str = _f("", "named cut point (see `heronsfl ls`); empty = the task's paper split")
    aux: Literal["linear", "conv", "resblock"] = _f(
        "linear",
        "aux head after the cut: Flatten+Linear (HERON paper), a small conv head, or resblock: "
        "two BasicBlocks doubling the channels (like the next ResNet stage) + pool + Linear "
        "(FSL-SAGE's aux)",
    )
    name: str = _f(
        "", "language models: hub id, local directory or .gguf path; empty = the task's model"
    )
    pretrained: bool = _f(True, "language models: load weights (false: the architecture only)")
    aux_blocks: int = _f(-1, "language models: transformer blocks in the aux head; -1 = paper")
    lora_rank: int = _f(8, "language models: LoRA rank on client, aux and server", check=">0")
    dtype: Literal["fp32", "bf16", "fp16"] = _f(
        "fp32", "language models: dtype of the frozen base weights (LoRA stays fp32)"
    )
    stem: Literal["cifar", "imagenet"] = _f(
        "cifar",
        "ResNet stem: 3x3 stride 1 (CIFAR), or 7x7 stride 2 + max-pool (ImageNet, as the "
        "public FSL-SAGE code uses on 32x32 inputs)",
    )

    width: int = _f(
        0, "base channel width; 0 = the task's standard width (64 for ResNet-18)", check=">=0"
    )
    freeze_client: bool = _f(
        False,
        "control run: the client sub-model keeps its initial weights, only aux head and server "
        "learn (algorithms with an aux head)",
    )


@dataclass(frozen=True)
class DataConfig:
    """Where data comes from and how it is split across clients."""

    root: str = _f("data", "directory holding the dataset (e.g. ../shared/data)")
    download: bool = _f(False, "download the official files into root when they are missing")
    cache_dir: str = _f(
        "", "where decoded images are cached; empty = $XDG_CACHE_HOME/heronsfl or ~/.cache/heronsfl"
    )
    partition: str = _f("iid", "how training data is split across clients (see `heronsfl ls`)")
    alpha: float = _f(
        0.5,
        "Dirichlet concentration of dirichlet / dirichlet-equal "
        "(0.01 ≈ one class per client, 1e4 ≈ IID)",
        check=">0",
    )
    shards_per_client: int = _f(
        2, "label-sorted shards per client for the shards partition", check=">0"
    )
    augment: bool = _f(True, "random crop + horizontal flip on image tasks that use it")
    train_subset: int = _f(
        0, "use only the first N shuffled training samples (0 = all)", check=">=0"
    )
    test_subset: int = _f(0, "evaluate on only the first N test samples (0 = all)", check=">=0")
    max_length: int = _f(512, "language models: tokens per sample (padded)", check=">0")
    test_mrs: int = _f(
        0, "E2E: meaning representations to generate for after the run (0 = all 630)", check=">=0"
    )
    synthetic: int = _f(
        0,
        "N > 0 replaces the dataset by N random samples of its shape: for plumbing and costs",
        check=">=0",
    )


@dataclass(frozen=True)
class CommConfig:
    """What crosses the network, and at which precision it is counted and sent."""

    wire_dtype: WireDtype = _f(
        "fp16", "precision of every float payload (activations, gradients, models); paper: FP16"
    )


@dataclass(frozen=True)
class RunConfig:
    """One experiment."""

    algorithm: str = _f("heron-sfl", "algorithm (see `heronsfl ls`)")
    task: str = _f("resnet18-cifar10", "model + dataset (see `heronsfl ls`)")
    rounds: int = _f(30, "communication rounds", check=">0")
    clients: int = _f(5, "number of clients (all take part in every round)", check=">0")
    seed: int = _f(
        0, "root of every random stream (init, data order, partition, ZO probes)", check=">=0"
    )
    device: Literal["auto", "cpu", "cuda"] = _f("auto", "auto = cuda when available")
    deterministic: bool = _f(False, "torch.use_deterministic_algorithms(True)")
    train: TrainConfig = field(default_factory=TrainConfig)
    client_optim: OptimConfig = field(default_factory=OptimConfig)
    server_optim: OptimConfig = field(default_factory=OptimConfig)
    zo: ZOConfig = field(default_factory=ZOConfig)
    fsl_sage: FSLSAGEConfig = field(default_factory=FSLSAGEConfig)
    ho_sfl: HOSFLConfig = field(default_factory=HOSFLConfig)

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    comm: CommConfig = field(default_factory=CommConfig)


# ----------------------------------------------------------------------------- building


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _cast(value: Any, typ: Any, path: str) -> Any:
    """Cast a TOML or command-line value to the field's type; raise ValueError with the fix."""
    origin = get_origin(typ)
    if origin is Literal:
        allowed = get_args(typ)
        if value not in allowed:
            raise ValueError(
                f"{path} = {value!r} is not one of {', '.join(repr(a) for a in allowed)}"
            )
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError(f"{path} = {value!r} must be true or false")
    if typ is int:
        if isinstance(value, bool):
            raise ValueError(f"{path} = {value!r} must be an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"{path} = {value!r} must be an integer")
    if typ is float:
        if isinstance(value, bool):
            raise ValueError(f"{path} = {value!r} must be a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{path} = {value!r} must be a number") from None
    if typ is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{path} = {value!r} must be a string (quote it in TOML)")
    raise TypeError(f"unsupported config type {typ!r} at {path}")  # internal: a new field type


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(known))}"


def _build(cls: type, data: dict[str, Any], prefix: str, problems: list[str]) -> Any:
    hints = _hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in hints:
            problems.append(f"unknown config key {path!r}{_suggest(key, names)}")
            continue
        typ = hints[key]
        if is_dataclass(typ):
            if not isinstance(value, dict):
                problems.append(f"{path} must be a table ([{path}]), got {value!r}")
                continue
            kwargs[key] = _build(typ, value, f"{path}.", problems)
            continue
        try:
            kwargs[key] = _cast(value, typ, path)
        except ValueError as e:
            problems.append(str(e))
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Build a RunConfig from a nested dict (a parsed TOML file), then validate it."""
    problems: list[str] = []
    cfg = _build(RunConfig, data, "", problems)
    problems += validate(cfg)
    if problems:
        raise ConfigError(problems)
    return typing.cast(RunConfig, cfg)


def parse_override(text: str) -> tuple[list[str], str]:
    """`a.b=value` -> (["a", "b"], "value")."""
    if "=" not in text:
        raise ConfigError(
            f"override {text!r} must look like key=value, e.g. rounds=2 or zo.mu=1e-3"
        )
    key, value = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r} has an empty key")
    return path, value.strip()


def _merge_override(data: dict[str, Any], path: list[str], value: str) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    # Strings from the command line are cast by _build to the field's type.
    node[path[-1]] = value


def split_config_args(args: list[str]) -> tuple[str | None, list[str]]:
    """`[CONFIG.toml | PRESET] [key=value ...]`: the config is the first argument without '='."""
    config = None
    overrides = []
    for a in args:
        if "=" in a:
            overrides.append(a)
        elif config is None:
            config = a
        else:
            raise ConfigError(
                f"unexpected argument {a!r}: give one config file, then key=value overrides"
            )
    return config, overrides


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:  # type: ignore[assignment]
    """Read a TOML file (or a preset name, see `presets()`), apply dotted overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        file = resolve_config_path(path)
        try:
            with open(file, "rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{file}: invalid TOML ({e}); fix the file's syntax") from None
    for text in overrides:
        _merge_override(data, *parse_override(text))
    return config_from_dict(data)


def presets_dir() -> Path:
    return Path(__file__).parent / "configs"


def presets() -> dict[str, Path]:
    """Shipped presets by name (file stem), e.g. 'heron_sfl_resnet18_cifar10'."""
    return {p.stem: p for p in sorted(presets_dir().glob("*.toml"))}


def resolve_config_path(path: str | Path) -> Path:
    file = Path(path)
    if file.is_file():
        return file
    known = presets()
    if str(path) in known:
        return known[str(path)]
    hint = _suggest(str(path), list(known)) if known else ""
    raise ConfigError(f"config file {str(path)!r} not found (nor a preset of that name){hint}")


# ----------------------------------------------------------------------------- validation


def _range_problems(obj: Any, prefix: str = "") -> list[str]:
    """Every field whose value is outside the range its `check` metadata declares."""
    problems = []
    for f in fields(obj):
        value, path = getattr(obj, f.name), f"{prefix}{f.name}"
        if is_dataclass(value):
            problems += _range_problems(value, f"{path}.")
        elif f.metadata.get("check") == ">0" and not (value > 0 and math.isfinite(value)):
            problems.append(f"{path} = {value} must be > 0")
        elif f.metadata.get("check") == ">=0" and value < 0:
            problems.append(f"{path} = {value} must be >= 0")
    return problems


def validate(cfg: RunConfig) -> list[str]:
    """Every problem with `cfg`, as one line each naming the key and the fix."""
    # Imported here: the registries import models and algorithms, which import this module.
    from heronsfl.algorithms import ALGORITHMS
    from heronsfl.data.partition import PARTITIONERS
    from heronsfl.tasks import TASKS

    p: list[str] = []
    t = cfg.train

    if cfg.algorithm not in ALGORITHMS:
        p.append(f"unknown algorithm {cfg.algorithm!r}; known: {', '.join(sorted(ALGORITHMS))}")
    if cfg.model.freeze_client and cfg.algorithm in ALGORITHMS:
        algo = ALGORITHMS[cfg.algorithm]
        if not (algo.uses_aux_head and algo.averages_aux):  # the control trains the aux locally
            p.append(
                f"model.freeze_client needs a client that trains its aux head, not "
                f"{cfg.algorithm!r}; use heron-sfl or cse-fsl"
            )

    if cfg.zo.exchange == "seeds" and cfg.algorithm in ALGORITHMS:
        if not hasattr(ALGORITHMS[cfg.algorithm], "replay"):
            p.append(
                f"zo.exchange = 'seeds' needs a zeroth-order client, not {cfg.algorithm!r}; "
                "use heron-sfl or mezo, or zo.exchange=params"
            )
    if cfg.task not in TASKS:
        p.append(f"unknown task {cfg.task!r}; known: {', '.join(sorted(TASKS))}")
    elif cfg.model.cut and cfg.model.cut not in TASKS[cfg.task].cuts:
        p.append(
            f"model.cut = {cfg.model.cut!r} does not exist in task {cfg.task!r}; "
            f"choose one of: {', '.join(TASKS[cfg.task].cuts)}"
        )
    if cfg.data.partition not in PARTITIONERS:
        p.append(
            f"unknown data.partition {cfg.data.partition!r}; "
            f"known: {', '.join(sorted(PARTITIONERS))}"
        )
    p += _range_problems(cfg)
    if not 0 < t.client_fraction <= 1:
        p.append(f"train.client_fraction = {t.client_fraction} must be in (0, 1]")
    if t.clients_per_round > cfg.clients:
        p.append(
            f"train.clients_per_round = {t.clients_per_round} > clients = {cfg.clients}; "
            "sample at most all clients"
        )
    if t.upload_every > t.local_steps > 0:
        p.append(
            f"train.upload_every (k = {t.upload_every}) > train.local_steps (h = {t.local_steps}): "
            "a client would never upload; set k <= h"
        )
    return p


# ----------------------------------------------------------------------------- writing


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return (
            repr(v)
            if math.isfinite(v)
            else ("nan" if math.isnan(v) else f"{'-' if v < 0 else ''}inf")
        )
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"cannot write {v!r} to TOML")  # internal: config fields are scalars


def to_toml(cfg: RunConfig) -> str:
    """The fully resolved config as TOML, with each field's help as a comment."""
    lines: list[str] = []
    tables: list[tuple[str, Any]] = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            tables.append((f.name, value))
        else:
            lines.append(f"{f.name} = {_toml_value(value)}  # {f.metadata.get('help', '')}")
    for name, table in tables:
        lines.append(f"\n[{name}]")
        for f in fields(table):
            help_text = f.metadata.get("help", "")
            lines.append(f"{f.name} = {_toml_value(getattr(table, f.name))}  # {help_text}")
    return "\n".join(lines) + "\n"


def with_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply dotted overrides to an existing config (used by the demo and bench)."""
    data = to_dict(cfg)
    for text in overrides:
        _merge_override(data, *parse_override(text))
    return config_from_dict(data)


def describe_fields(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every field: `heronsfl ls --keys`."""
    rows: list[tuple[str, str, str]] = []
    hints = _hints(cls)
    inst = cls()
    for f in fields(cls):
        value = getattr(inst, f.name)
        if is_dataclass(hints[f.name]):
            rows += describe_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", _toml_value(value), f.metadata.get("help", "")))
    return rows


__all__ = [
    "CommConfig",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "ZOConfig",
    "config_from_dict",
    "load_config",
    "replace",
    "to_toml",
    "validate",
    "with_overrides",
]
