"""Partitioners: how the training set is split across clients. Seeded, every sample used once.

A partitioner maps (labels, num_clients, rng, data config) to one index array per client. The
registry is an explicit dict so `heronsfl ls` and config validation see the same names.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from heronsfl.config import DataConfig
from heronsfl.errors import DataError

Partitioner = Callable[[np.ndarray, int, np.random.Generator, DataConfig], list[np.ndarray]]


def iid(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, cfg: DataConfig
) -> list[np.ndarray]:
    """A uniformly random split into num_clients parts whose sizes differ by at most one."""
    order = rng.permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, num_clients)]


PARTITIONERS: dict[str, Partitioner] = {"iid": iid}


def partition(
    name: str,
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    cfg: DataConfig | None = None,
) -> list[np.ndarray]:
    """Split indices of `labels` across clients; every client must get at least one sample."""
    if name not in PARTITIONERS:
        raise ValueError(f"unknown partition {name!r}; known: {', '.join(sorted(PARTITIONERS))}")
    if num_clients > len(labels):
        raise DataError(
            f"{num_clients} clients but only {len(labels)} training samples: "
            "lower `clients` or raise data.train_subset"
        )
    parts = PARTITIONERS[name](labels, num_clients, rng, cfg or DataConfig())
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise DataError(f"partition {name!r} gave clients {empty} no data: lower `clients`")
    return parts
