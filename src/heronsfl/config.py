"""Run configuration: one tree of frozen dataclasses, the only place defaults live.

Field names are the TOML keys and the dotted override paths (`zo.mu=1e-3`). Every field carries a
`help` string; `heronsfl validate` and `load_config` collect *all* problems into one ConfigError
before a single tensor is allocated.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from heronsfl.errors import ConfigError, UserError

WireDtype = Literal["fp32", "fp16", "bf16"]

# Bounds that keep a run within what can finish. Each is far above anything the papers use and
# is where the next unit of cost buys (almost) nothing:
# - ZO probes: the estimate's variance falls as 1/q while a step costs q + 1 forwards. At
#   q = 1024 one ZO step already costs about 340 first-order steps (forward + backward = ~3
#   forwards) for an estimate still noisier than the exact gradient FO gets; the ZO papers
#   here use single-digit q (MeZO: q = 1). Past this, train the client first-order instead.
# - Local steps: h = 1e5 steps per client per round is already longer than a whole centralized
#   training of the paper's model (ResNet-18/CIFAR-10: 200 epochs at batch 256 are ~39k
#   steps); a round longer than that is no longer federated learning, and at 1e9 it never ends.
# - Clients: each needs at least one training sample, and the largest training set in the
#   registry (CIFAR-10: 50,000 images) has fewer than 1e5; past that the partitioner would
#   build per-client arrays for a population that cannot exist (1e9 clients never start).
MAX_PROBES = 1024
MAX_LOCAL_STEPS = 100_000
MAX_CLIENTS = 100_000
INT64_MAX = 2**63 - 1  # torch and numpy take 64-bit integers (seeds, sizes, step counts)


def config_field(default: Any, help: str, check: str | None = None) -> Any:
    """A config field: its default, its help text and (optionally) its allowed range.

    `check` is ">0", ">=0" or an interval such as "[0, 1)" or "[1, 1024]" (`inf` allowed).
    Whatever the check, a float must be finite and an int must fit in 64 bits. Also for the
    algorithms' own config sections, declared next to their code.
    """
    return field(default=default, metadata={"help": help, "check": check})


_f = config_field


_INTERVAL = re.compile(r"^([\[(])\s*([^,]+?)\s*,\s*([^\])]+?)\s*([\])])$")


def range_problem(path: str, value: Any, check: str | None) -> str | None:
    """The problem with `value` under `check` (see `_f`), or None when it is in range.

    The one range walker for config fields and command-line flags alike (bench uses it).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"{path} = {value} must be a finite number"
    if isinstance(value, int) and abs(value) > INT64_MAX:
        return f"{path} = {value} is out of range: at most {INT64_MAX} (a 64-bit integer)"
    if check is None:
        return None
    if check == ">0":
        return None if value > 0 else f"{path} = {value} must be > 0"
    if check == ">=0":
        return None if value >= 0 else f"{path} = {value} must be >= 0"
    m = _INTERVAL.match(check)
    assert m is not None, f"bad range spec {check!r} for {path}"
    lo, hi = float(m.group(2)), float(m.group(3))
    above = value > lo if m.group(1) == "(" else value >= lo
    below = value < hi if m.group(4) == ")" else value <= hi
    return None if above and below else f"{path} = {value} must be in {check}"


@dataclass(frozen=True)
class TrainConfig:
    """Local schedule of one round (paper symbols h and k)."""

    local_steps: int = _f(
        50,
        "h: local steps (mini-batches) each client runs per round",
        check=f"[1, {MAX_LOCAL_STEPS}]",
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
        1.0,
        "partial participation: fraction of clients sampled each round (when count is 0)",
        check="(0, 1]",
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

    name: Literal["adam", "sgd", "signsgd"] = _f(
        "adam",
        "adam (paper) or sgd; for a ZO client, sgd is the in-place MeZO update (with momentum: "
        "ZO-SGD-M, LOZO-M under zo.perturbation=lowrank) and signsgd is ZO-SignSGD (ZO "
        "clients only); lr notes in zo/optim.py",
    )
    lr: float = _f(1e-4, "learning rate (paper: Adam 1e-4 on both sides)", check=">0")
    # Heavy-ball momentum >= 1 never forgets a gradient: the update grows without bound.
    momentum: float = _f(
        0.0, "SGD momentum; ZO clients: ZO-SGD / ZO-SignSGD momentum (zo/optim.py)", check="[0, 1)"
    )
    # An L2 coefficient above 1 lets the penalty wd * |θ|² / 2 outweigh any O(1) data loss for
    # every real network (|θ|² >> 1): training would only shrink the weights (common: <= 5e-4).
    weight_decay: float = _f(0.0, "L2 weight decay", check="[0, 1]")


@dataclass(frozen=True)
class ZOConfig:
    """Zeroth-order estimator of a ZO client (HERON-SFL paper Eq. 2; MeZO)."""

    # A finite difference estimates a derivative only for a step small next to the weights;
    # mu > 1 moves them by more than their own scale (and 1e300 overflows fp32).
    mu: float = _f(1e-3, "mu: perturbation scale of the finite difference", check="(0, 1]")
    num_probes: int = _f(
        0,
        "random directions per step of every ZO client (HERON-SFL/MeZO: q, averaged; HO-SFL: "
        "P shared probes); 0 = the algorithm's paper default (1; HO-SFL: 5)",
        check=f"[0, {MAX_PROBES}]",
    )
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
    perturbation: Literal["dense", "lowrank", "sparse", "sparse-magnitude", "block"] = _f(
        "dense",
        "shape of u (zo/directions.py): dense N(0, I) (MeZO); lowrank U V^T per weight matrix "
        "(LOZO); sparse: a seeded zo.density of the coordinates; sparse-magnitude: the "
        "zo.density smallest-magnitude weights (Sparse MeZO); block: one of zo.num_blocks "
        "parameter blocks per step, cycling",
    )
    rank: int = _f(1, "r: rank of a lowrank direction per weight matrix", check=">0")
    v_every: int = _f(
        10,
        "ν: lowrank V is redrawn every ν local steps, U every step (LOZO's lazy sampling; "
        "LOZO-M's momentum lives in U-space in between)",
        check=">0",
    )
    density: float = _f(
        0.1, "fraction of each tensor's coordinates a sparse direction moves", check="(0, 1]"
    )
    num_blocks: int = _f(4, "block: parameter blocks the client cycles through", check=">0")
    probe_batch: Literal["sequential", "batched"] = _f(
        "sequential",
        "q probes one forward after another on θ perturbed in place (MeZO), or as one "
        "batched forward over q perturbed parameter copies (torch.func.vmap): fewer, larger "
        "kernels for q copies of the parameters and q forwards' activations",
    )
    aux_update: Literal["zo", "backprop"] = _f(
        "zo",
        "heron-sfl aux head: zeroth-order with the client (paper), or backprop: first-order "
        "on the cut activation the client already holds (hybrid client; the client sub-model "
        "stays ZO and no client activation is stored for a backward)",
    )
    aux_lr: float = _f(0.0, "Adam lr of the backprop aux head; 0 = client_optim.lr", check=">=0")


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
    aux_blocks: int = _f(
        -1, "language models: transformer blocks in the aux head; -1 = paper", check="[-1, inf)"
    )
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
    init: Literal["default", "kaiming"] = _f(
        "default",
        "conv weight initialisation: PyTorch's default (kaiming-uniform, a = sqrt(5)), or "
        "kaiming: kaiming_normal_(fan_out, relu) on every conv of client, server and aux head "
        "(torchvision's ResNet init, which the public FSL-SAGE code uses)",
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
class PrivacyConfig:
    """Defenses of the uploaded activations against an honest-but-curious main server
    (`heronsfl attack inversion` measures what they buy). All off by default."""

    noise_std: float = _f(
        0.0,
        "std of Gaussian noise added to every uploaded activation element (0 = none); "
        "the client's own local loss sees the clean activations",
        check=">=0",
    )
    clip_norm: float = _f(
        0.0,
        "clip each sample's uploaded activations to this L2 norm before the noise (0 = none)",
        check=">=0",
    )
    nopeek_weight: float = _f(
        0.0,
        "NoPeek (arXiv 2008.09161): weight of the distance correlation between a batch's inputs "
        "and activations, added to the client's local loss (0 = none); a ZO client minimises it "
        "with forward passes alone",
        check=">=0",
    )
    keep_client_rounds: bool = _f(
        False,
        "save the global client sub-model of every round in client_rounds/ of the run "
        "directory, so an attack can compare rounds",
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
    clients: int = _f(
        5, "number of clients (all take part in every round)", check=f"[1, {MAX_CLIENTS}]"
    )
    seed: int = _f(
        0, "root of every random stream (init, data order, partition, ZO probes)", check=">=0"
    )
    device: Literal["auto", "cpu", "cuda"] = _f("auto", "auto = cuda when available")
    deterministic: bool = _f(False, "torch.use_deterministic_algorithms(True)")
    train: TrainConfig = field(default_factory=TrainConfig)
    client_optim: OptimConfig = field(default_factory=OptimConfig)
    server_optim: OptimConfig = field(default_factory=OptimConfig)
    zo: ZOConfig = field(default_factory=ZOConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    comm: CommConfig = field(default_factory=CommConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    # The algorithms' own tables ([fsl_sage], ...): each algorithm declares its section next
    # to its code (`SplitAlgorithm.config_section`); registry.py passes them to parse_config.
    sections: dict[str, Any] = field(default_factory=dict, metadata={"help": "", "check": None})

    def section(self, name: str) -> Any:
        """The config of table `name` (an algorithm's own section)."""
        return self.sections[name]


# Keys that moved: the old key gets an error naming the new one.
MOVED = {"ho_sfl.num_probes": "zo.num_probes (one probes knob for every zeroth-order client)"}


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


def _build(
    cls: type, data: dict[str, Any], prefix: str, problems: list[str], also: Sequence[str] = ()
) -> Any:
    """`cls` from a (sub)table; `also` are other keys known at this level (for suggestions)."""
    hints = _hints(cls)
    names = [f.name for f in fields(cls) if f.name != "sections"] + list(also)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in hints or key == "sections":
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


def parse_config(
    data: dict[str, Any], section_types: Mapping[str, type] | None = None
) -> tuple[RunConfig, list[str]]:
    """A RunConfig from a nested dict (a parsed TOML file) and the problems of its shape
    (unknown keys, wrong types); `validate` then checks its values.

    `section_types` are the algorithms' own tables (name -> dataclass). Names (algorithm,
    task, partition) are checked where their registries live; registry.py puts it together.
    """
    section_types = section_types or {}
    problems: list[str] = []
    data = dict(data)
    for old, new in MOVED.items():
        table, key = old.split(".")
        if isinstance(data.get(table), dict) and key in data[table]:
            problems.append(f"{old} is now {new}: use {new.split()[0]}={data[table][key]}")
            data[table] = {k: v for k, v in data[table].items() if k != key}
            if not data[table]:
                del data[table]
    raw = {name: data.pop(name) for name in list(data) if name in section_types}
    cfg = _build(RunConfig, data, "", problems, also=list(section_types))
    sections = {}
    for name, typ in section_types.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            problems.append(f"{name} must be a table ([{name}]), got {table!r}")
            table = {}
        sections[name] = _build(typ, table, f"{name}.", problems)
    return typing.cast(RunConfig, replace(cfg, sections=sections)), problems


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


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Merge dotted `key=value` overrides into a nested dict (in place; returned)."""
    for text in overrides:
        _merge_override(data, *parse_override(text))
    return data


def _known_key(key: str) -> bool:
    """Whether `key` (dotted) names a config field or table."""
    cls: Any = RunConfig
    for part in key.split("."):
        hints = _hints(cls) if is_dataclass(cls) else {}
        if part not in hints:
            return False
        cls = hints[part]
    return True


def split_config_args(args: list[str]) -> tuple[str | None, list[str]]:
    """`[CONFIG.toml | PRESET] [key=value ...]`: the config is the first argument without '='.

    An existing file is the config even if its name holds '='; an argument that looks like a
    file name (`a=b.toml`) but names no config key gets a message saying both readings failed.
    """
    config = None
    overrides = []
    for a in args:
        key = a.split("=", 1)[0].strip()
        is_file = Path(a).is_file()
        if "=" in a and not is_file:
            if a.endswith(".toml") and not _known_key(key):
                raise ConfigError(
                    f"{a!r} is neither a config file (no such file) nor an override "
                    f"(no config key {key!r}); give an existing CONFIG.toml, or key=value with "
                    "a key from `heronsfl ls --keys`"
                )
            overrides.append(a)
        elif config is None:
            if not is_file and _known_key(a) and a not in presets():
                raise ConfigError(f"{a!r} is a config key without a value: write {a}=VALUE")
            config = a
        else:
            raise ConfigError(
                f"unexpected argument {a!r}: give one config file, then key=value overrides"
            )
    return config, overrides


def read_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a TOML file (or a preset name, see `presets()`) and apply dotted overrides: the raw
    nested dict that registry.config_from_dict builds and checks."""
    from heronsfl.files import read_toml  # the one reader of user files

    data: dict[str, Any] = {}
    if path is not None:
        file = resolve_config_path(path)
        try:
            data = read_toml(file, "config file")
        except UserError as e:
            raise ConfigError(str(e)) from None
    return apply_overrides(data, overrides)


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
        if f.name == "sections" and isinstance(value, dict):
            for name, section in value.items():
                problems += _range_problems(section, f"{name}.")
        elif is_dataclass(value):
            problems += _range_problems(value, f"{path}.")
        elif (problem := range_problem(path, value, f.metadata.get("check"))) is not None:
            problems.append(problem)
    return problems


def validate(cfg: RunConfig) -> list[str]:
    """Every problem with `cfg`'s values, as one line each naming the key and the fix.

    Names (algorithm, task, partition) are checked where their registries live (registry.py).
    """
    p: list[str] = []
    t = cfg.train
    p += _zo_problems(cfg)
    p += _range_problems(cfg)
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


def _zo_problems(cfg: RunConfig) -> list[str]:
    """The zeroth-order client's options that do not fit each other (what they need of the
    algorithm is checked by `SplitAlgorithm.config_problems`)."""
    p, zo = [], cfg.zo
    if cfg.server_optim.name == "signsgd":
        p.append("server_optim.name = 'signsgd' is a zeroth-order client update; use adam or sgd")
    if zo.distribution == "sphere" and zo.perturbation not in ("dense", "block"):
        p.append(
            f"zo.distribution = 'sphere' works with dense or block directions, not "
            f"{zo.perturbation!r}; use zo.distribution=gaussian"
        )
    if zo.aux_update == "backprop" and zo.exchange == "seeds":
        p.append(
            "zo.exchange = 'seeds' cannot replay a first-order aux head "
            "(zo.aux_update = 'backprop'); use zo.exchange=params"
        )
    return p


# ----------------------------------------------------------------------------- writing


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as nested tables, the algorithms' sections at the top level like in TOML."""
    data = dataclasses.asdict(cfg)
    data.update(data.pop("sections", {}))
    return data


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
        if f.name == "sections":
            tables += list(value.items())
        elif is_dataclass(value):
            tables.append((f.name, value))
        else:
            lines.append(f"{f.name} = {_toml_value(value)}  # {f.metadata.get('help', '')}")
    for name, table in tables:
        lines.append(f"\n[{name}]")
        for f in fields(table):
            help_text = f.metadata.get("help", "")
            lines.append(f"{f.name} = {_toml_value(getattr(table, f.name))}  # {help_text}")
    return "\n".join(lines) + "\n"


def describe_fields(
    cls: type = RunConfig, prefix: str = "", sections: Mapping[str, type] | None = None
) -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every field, and of every section in `sections`:
    `heronsfl ls --keys`."""
    rows: list[tuple[str, str, str]] = []
    hints = _hints(cls)
    inst = cls()
    for f in fields(cls):
        value = getattr(inst, f.name)
        if f.name == "sections":
            for name, typ in (sections or {}).items():
                rows += describe_fields(typ, f"{name}.")
        elif is_dataclass(hints[f.name]):
            rows += describe_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", _toml_value(value), f.metadata.get("help", "")))
    return rows


__all__ = [
    "CommConfig",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "PrivacyConfig",
    "RunConfig",
    "TrainConfig",
    "ZOConfig",
    "parse_config",
    "read_config",
    "replace",
    "to_toml",
    "validate",
]
