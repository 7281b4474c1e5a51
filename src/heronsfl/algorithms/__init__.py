"""The algorithm registry: one module per algorithm, one line here.

An algorithm defined elsewhere (a research prototype, a test) joins with `register_algorithm`;
its own config section (`config_section`, `Config`) is then a table of every RunConfig.
"""

from __future__ import annotations

import re
from typing import Any

from heronsfl.algorithms.base import SplitAlgorithm
from heronsfl.algorithms.cse_fsl import CSEFSL
from heronsfl.algorithms.fedavg import FedAvg
from heronsfl.algorithms.fsl_sage import FSLSAGE
from heronsfl.algorithms.heron_sfl import HeronSFL
from heronsfl.algorithms.ho_sfl import HOSFL
from heronsfl.algorithms.mezo import MeZO
from heronsfl.algorithms.sflv1 import SFLV1
from heronsfl.algorithms.sflv2 import SFLV2
from heronsfl.algorithms.splitlora import SplitLoRA
from heronsfl.config import RunConfig

ALGORITHMS: dict[str, type[SplitAlgorithm]] = {
    "heron-sfl": HeronSFL,
    "sflv1": SFLV1,
    "sflv2": SFLV2,
    "cse-fsl": CSEFSL,
    "fsl-sage": FSLSAGE,
    "ho-sfl": HOSFL,
    "fedavg": FedAvg,
    "mezo": MeZO,
    "splitlora": SplitLoRA,
}


def register_algorithm(cls: type[SplitAlgorithm]) -> type[SplitAlgorithm]:
    """Add `cls` to the registry under `cls.name` (lower-kebab, unique); usable as a decorator."""
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name):
        raise ValueError(f"algorithm name {name!r} must be lower-kebab, e.g. 'my-sfl'")
    if name in ALGORITHMS and ALGORITHMS[name] is not cls:
        raise ValueError(f"algorithm {name!r} is already registered ({ALGORITHMS[name]})")
    section = cls.config_section
    owner = {a.config_section: n for n, a in ALGORITHMS.items() if n != name}.get(section)
    if section is not None and owner is not None and ALGORITHMS[owner].Config is not cls.Config:
        raise ValueError(f"config section {section!r} already belongs to {owner!r}")
    ALGORITHMS[name] = cls
    return cls


def config_sections() -> dict[str, type[Any]]:
    """Every registered algorithm's own config table: name -> frozen dataclass."""
    return {
        a.config_section: a.Config
        for a in ALGORITHMS.values()
        if a.config_section is not None and a.Config is not None
    }


def check_config(cfg: RunConfig) -> list[str]:
    """The config's algorithm, checked against this registry, and what it says of the config."""
    if cfg.algorithm not in ALGORITHMS:
        return [f"unknown algorithm {cfg.algorithm!r}; known: {', '.join(sorted(ALGORITHMS))}"]
    return ALGORITHMS[cfg.algorithm].config_problems(cfg)


def get_algorithm(name: str) -> type[SplitAlgorithm]:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]
