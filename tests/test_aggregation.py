from __future__ import annotations

import numpy as np
import pytest
import torch

from heronsfl.aggregation import WeightedAverage, to_wire
from heronsfl.data.partition import partition
from heronsfl.errors import DataError


def test_weighted_average_one_to_two() -> None:
    a = {"w": torch.tensor([1.0, 4.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([4.0, 1.0]), "n": torch.tensor(6)}
    avg = WeightedAverage()
    avg.add(a, 1.0)
    avg.add(b, 2.0)
    out = avg.result(like=a)
    assert torch.allclose(out["w"], (a["w"] + 2 * b["w"]) / 3)
    assert out["n"].dtype == torch.int64 and int(out["n"]) == 5


def test_to_wire_casts_floats_only() -> None:
    s = to_wire({"w": torch.ones(3), "n": torch.tensor(2)}, torch.float16)
    assert s["w"].dtype == torch.float16 and s["n"].dtype == torch.int64


def test_iid_partition_covers_without_overlap_and_is_seeded() -> None:
    labels = np.arange(103) % 10
    parts = partition("iid", labels, 4, np.random.default_rng(0))
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(103))
    assert {len(p) for p in parts} <= {25, 26}
    again = partition("iid", labels, 4, np.random.default_rng(0))
    assert all(np.array_equal(x, y) for x, y in zip(parts, again, strict=True))


def test_more_clients_than_samples_names_the_fix() -> None:
    with pytest.raises(DataError, match="lower `clients`"):
        partition("iid", np.zeros(3), 5, np.random.default_rng(0))
