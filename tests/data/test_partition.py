"""Tests for heronsfl.data.partition: sizes, coverage, seeding, order independence, skew, errors."""

from __future__ import annotations

import numpy as np
import pytest

from heronsfl.config import DataConfig, RunConfig
from heronsfl.data.partition import MAX_DIRICHLET_DRAWS, PARTITIONERS, partition
from heronsfl.errors import DataError
from heronsfl.registry import problems

NAMES = sorted(PARTITIONERS)


def _labels(sizes: list[int], seed: int = 0) -> np.ndarray:
    """Labels with the given class sizes, in a random (not label-sorted) order."""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return np.random.default_rng(seed).permutation(labels)


def _label_counts(labels: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    """(clients, classes) matrix of how many samples of each class each client holds."""
    k = int(labels.max()) + 1
    return np.stack([np.bincount(labels[p], minlength=k) for p in parts])


def _run(name: str, labels: np.ndarray, clients: int, seed: int = 0, **cfg: float) -> list:
    return partition(name, labels, clients, np.random.default_rng(seed), DataConfig(**cfg))


UNBALANCED = [40, 7, 25, 3, 60, 12, 9, 30, 5, 19]  # 210 samples, 10 classes


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("alpha", [0.01, 0.5, 1e4])
def test_every_sample_used_exactly_once(name: str, alpha: float) -> None:
    labels = _labels(UNBALANCED)
    parts = _run(name, labels, 4, alpha=alpha)
    assert len(parts) == 4 and all(len(p) > 0 for p in parts)
    assert all(np.all(np.diff(p) > 0) for p in parts)  # sorted, no repeats within a client
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))


@pytest.mark.parametrize("name", ["iid", "dirichlet-equal"])
@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.5, 1e4])
def test_equal_size_partitions_have_exact_sizes(name: str, alpha: float) -> None:
    # Prepare: 211 samples over 4 clients -> 53, 53, 53, 52 (np.array_split's convention)
    labels = _labels([*UNBALANCED, 1])
    # Execute
    parts = _run(name, labels, 4, alpha=alpha)
    # Assert
    assert [len(p) for p in parts] == [53, 53, 53, 52]


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_partition_other_seed_other_partition(name: str) -> None:
    labels = _labels(UNBALANCED)
    a = _run(name, labels, 5, seed=3)
    b = _run(name, labels, 5, seed=3)
    c = _run(name, labels, 5, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_any_dataset_order_gives_the_same_label_counts(name: str) -> None:
    # Prepare: the same dataset in a different order (samples and labels permuted together)
    labels = _labels(UNBALANCED)
    perm = np.random.default_rng(7).permutation(len(labels))
    # Execute
    parts = _run(name, labels, 5, alpha=0.3)
    permuted = _run(name, labels[perm], 5, alpha=0.3)
    # Assert
    assert np.array_equal(_label_counts(labels, parts), _label_counts(labels[perm], permuted))


@pytest.mark.parametrize("name", NAMES)
def test_order_within_a_class_kept_gives_the_same_assignment(name: str) -> None:
    # Prepare: sort by label with a stable sort: classes regrouped, same-label order kept
    labels = _labels(UNBALANCED)
    perm = np.argsort(labels, kind="stable")  # new position j holds old sample perm[j]
    # Execute
    parts = _run(name, labels, 5, alpha=0.3)
    permuted = _run(name, labels[perm], 5, alpha=0.3)
    # Assert: mapped back to old indices, every client holds exactly the same samples
    for old, new in zip(parts, permuted, strict=True):
        assert np.array_equal(old, np.sort(perm[new]))


@pytest.mark.parametrize("name", ["dirichlet", "dirichlet-equal"])
def test_huge_alpha_gives_every_client_the_global_label_mix(name: str) -> None:
    labels = _labels([1000, 600, 1400, 800, 1200])
    counts = _label_counts(labels, _run(name, labels, 5, alpha=1e4))
    mix = counts / counts.sum(axis=1, keepdims=True)
    # Per-client sampling noise at 1000 samples: std <= 0.016 per class; 0.05 is > 3 std.
    assert np.abs(mix - np.bincount(labels) / len(labels)).max() < 0.05


def test_tiny_alpha_equal_sizes_gives_about_one_class_per_client() -> None:
    # 10 balanced classes, 10 clients: each client's quota is one class's size, so clients whose
    # favourite class is taken spill into their next favourite, not into a mix.
    labels = _labels([100] * 10)
    counts = _label_counts(labels, _run("dirichlet-equal", labels, 10, alpha=0.01))
    top_share = counts.max(axis=1) / counts.sum(axis=1)
    assert top_share.mean() > 0.9, top_share
    assert (counts > 0).sum(axis=1).max() <= 3, counts


def test_tiny_alpha_natural_sizes_gives_each_class_to_about_one_client() -> None:
    # Dir(0.01, 0.01, 0.01) puts > 0.9 of a class on one client with probability about 0.96,
    # so over 100 classes 0.85 is about 5 standard deviations below the mean.
    labels = _labels([20] * 100)
    counts = _label_counts(labels, _run("dirichlet", labels, 3, alpha=0.01))
    top_share = counts.max(axis=0) / counts.sum(axis=0)  # per class: the biggest client's share
    assert (top_share > 0.9).mean() > 0.85, top_share
    assert len(set(counts.sum(axis=1).tolist())) > 1  # sizes follow the draw, not a quota


def test_shards_give_at_most_shards_per_client_labels_when_shards_are_pure() -> None:
    # 10 classes of 30, 10 clients x 3 shards: 30 shards of 10, three per class, none straddling.
    labels = _labels([30] * 10)
    counts = _label_counts(labels, _run("shards", labels, 10, shards_per_client=3))
    assert counts.sum(axis=1).tolist() == [30] * 10
    assert (counts > 0).sum(axis=1).max() <= 3


def test_shards_straddling_classes_give_at_most_two_labels_each() -> None:
    # Shards of 21 or 22 samples, no class smaller than that: one shard spans <= 2 labels.
    labels = _labels([40, 25, 60, 30, 55])
    counts = _label_counts(labels, _run("shards", labels, 5, shards_per_client=2))
    assert (counts > 0).sum(axis=1).max() <= 2 * 2


def test_dirichlet_names_the_fix_when_clients_stay_empty() -> None:
    labels = _labels([3] * 10)
    with pytest.raises(DataError) as info:
        _run("dirichlet", labels, 10, alpha=0.01)
    message = str(info.value)
    assert message.startswith("dirichlet(alpha=0.01) left clients [")
    assert f"without data in {MAX_DIRICHLET_DRAWS} draws" in message
    assert "raise data.alpha, lower `clients`, or use data.partition=dirichlet-equal" in message
    # The equal-size variant cannot leave anyone out.
    assert all(len(p) == 3 for p in _run("dirichlet-equal", labels, 10, alpha=0.01))


def test_shards_name_the_fix_when_there_are_too_few_samples() -> None:
    with pytest.raises(DataError, match="lower data.shards_per_client or `clients`"):
        _run("shards", _labels([3, 3]), 4, shards_per_client=2)


def test_dirichlet_resamples_before_failing(monkeypatch: pytest.MonkeyPatch) -> None:
    # 6 clients, 12 samples of 4 classes at alpha=0.3: a first draw leaves someone empty,
    # a later one does not.
    labels = _labels([3, 3, 3, 3])
    monkeypatch.setattr("heronsfl.data.partition.MAX_DIRICHLET_DRAWS", 1)
    with pytest.raises(DataError, match="without data in 1 draws:"):
        _run("dirichlet", labels, 6, seed=1, alpha=0.3)
    monkeypatch.setattr("heronsfl.data.partition.MAX_DIRICHLET_DRAWS", 10)
    assert all(len(p) > 0 for p in _run("dirichlet", labels, 6, seed=1, alpha=0.3))


def test_config_accepts_every_partition_and_rejects_others() -> None:
    for name in NAMES:
        assert problems(RunConfig(data=DataConfig(partition=name))) == []
    found = problems(RunConfig(data=DataConfig(partition="dirichlet_equal")))
    assert any("unknown data.partition 'dirichlet_equal'" in p for p in found)
