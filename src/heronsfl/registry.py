"""Building a RunConfig and checking it against every registry at once.

config.py knows the shape of a config and imports no registry; each registry checks the names
it holds (`check_config` in algorithms/, tasks.py and data/partition.py) and the algorithms
declare their own config tables. This module puts them together, so `heronsfl validate` still
reports every problem in one ConfigError, with suggestions, before a tensor is allocated.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from heronsfl import algorithms, tasks
from heronsfl.config import (
    RunConfig,
    apply_overrides,
    parse_config,
    read_config,
    to_dict,
    validate,
)
from heronsfl.data import partition
from heronsfl.errors import ConfigError


def problems(cfg: RunConfig) -> list[str]:
    """Every problem with `cfg`: its names (each checked by its registry), then its values;
    sizes only for a config that is otherwise sound (checking them builds the model)."""
    found = [
        *algorithms.check_config(cfg),
        *tasks.check_config(cfg),
        *partition.check_config(cfg),
        *_pairing(cfg),
        *validate(cfg),
    ]
    return found or tasks.size_problems(cfg)


def _pairing(cfg: RunConfig) -> list[str]:
    """What the algorithm requires of the task (SplitAlgorithm.requires, Task.provides)."""
    algos, known = algorithms.ALGORITHMS, tasks.TASKS
    if cfg.algorithm not in algos or cfg.task not in known:
        return []
    requires = algos[cfg.algorithm].requires
    needs = requires - known[cfg.task].provides
    if not needs:
        return []
    fit = [n for n, task in known.items() if requires <= task.provides]
    return [
        f"algorithm {cfg.algorithm!r} needs a task with {' and '.join(sorted(needs))}, "
        f"which task {cfg.task!r} lacks; use one of: {', '.join(fit) or 'none yet'}"
    ]


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Build a RunConfig from a nested dict (a parsed TOML file), then check all of it."""
    cfg, found = parse_config(data, algorithms.config_sections())
    found += problems(cfg)
    if found:
        raise ConfigError(found)
    return cfg


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a TOML file (or a preset name), apply dotted overrides, check everything."""
    return config_from_dict(read_config(path, overrides))


def with_overrides(cfg: RunConfig, overrides: Sequence[str]) -> RunConfig:
    """Apply dotted overrides to an existing config (used by the demo, bench and tests)."""
    return config_from_dict(apply_overrides(to_dict(cfg), overrides))
