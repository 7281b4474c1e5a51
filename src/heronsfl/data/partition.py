"""Partitioners: how the training set is split across clients. Seeded, every sample used once.

A partitioner maps (labels, num_clients, rng, data config) to one sorted index array per client.
The registry is an explicit dict so `heronsfl ls` and config validation see the same names.

| name              | client sizes          | label mix per client                          |
|-------------------|-----------------------|-----------------------------------------------|
| `iid`             | floor/ceil(N/clients) | the global mix, up to sampling noise          |
| `dirichlet`       | vary (from the draw)  | per class, client shares ~ Dir(alpha)          |
| `dirichlet-equal` | floor/ceil(N/clients) | per client, class shares ~ Dir(alpha K p)      |
| `shards`          | floor/ceil, per shard | at most shards_per_client labels, see `shards` |

Order independence, exactly what is guaranteed (tested): every random draw depends only on the
seed and the label *counts*, never on where samples sit. Hence for any permutation of the dataset
(samples and labels together) the per-client label counts are identical, and for a permutation
that keeps the relative order of same-label samples (e.g. sorting by label, or re-interleaving
classes) the assignment of samples, indices mapped back, is identical too. Under an arbitrary
permutation, which of a class's samples a client receives can differ, but only by exchanging
samples of the same label: the partition has the same distribution either way.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from heronsfl.config import DataConfig, RunConfig
from heronsfl.errors import DataError

Partitioner = Callable[[np.ndarray, int, np.random.Generator, DataConfig], list[np.ndarray]]

# Natural-size Dirichlet draws are repeated at most this often when a client comes out empty
# (Flower's DirichletPartitioner uses the same cap) before the user is told to change alpha.
MAX_DIRICHLET_DRAWS = 10


# ----------------------------------------------------------------------------- helpers


def _class_members(labels: np.ndarray) -> list[np.ndarray]:
    """Indices of each class, classes in sorted label order, indices ascending within a class."""
    _, inverse = np.unique(labels, return_inverse=True)
    order = np.argsort(inverse, kind="stable")  # stable: ascending index within each class
    counts = np.bincount(inverse)
    return np.split(order, np.cumsum(counts)[:-1])


def _equal_sizes(n: int, num_clients: int) -> np.ndarray:
    """floor/ceil(n / num_clients); the first n % num_clients clients get the extra sample."""
    return np.array([len(p) for p in np.array_split(np.arange(n), num_clients)], dtype=np.int64)


def _assign(
    members: list[np.ndarray], counts: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """Give client i `counts[i, k]` random samples of class k; each sample goes to one client.

    A class's samples are shuffled before being cut, so which samples a client gets does not
    follow the dataset's order within the class (e.g. a writer or a source file).
    """
    num_clients = counts.shape[0]
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for k, idx in enumerate(members):
        assert counts[:, k].sum() == len(idx), f"class {k}: counts do not add up to its size"
        shuffled = idx[rng.permutation(len(idx))]
        for i, chunk in enumerate(np.split(shuffled, np.cumsum(counts[:, k])[:-1])):
            parts[i].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


# ----------------------------------------------------------------------------- partitioners


def iid(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, cfg: DataConfig
) -> list[np.ndarray]:
    """A uniformly random split into num_clients parts whose sizes differ by at most one.

    The permutation is applied to the samples in label-sorted order rather than in dataset
    order: the split stays uniformly random, and it no longer depends on how the dataset is
    ordered (see the module docstring).
    """
    canonical = np.concatenate(_class_members(labels))
    order = canonical[rng.permutation(len(labels))]
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def dirichlet(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, cfg: DataConfig
) -> list[np.ndarray]:
    """Label skew with natural client sizes: each class is split across clients by Dir(alpha).

    For every class k (in sorted label order), shares p_k ~ Dir(alpha, ..., alpha) over the
    clients are drawn, and client i gets floor(n_k * (p_k1 + ... + p_ki)) -
    floor(n_k * (p_k1 + ... + p_k(i-1))) of class k's n_k samples. Client sizes therefore vary
    (strongly for small alpha); alpha -> infinity approaches a stratified IID split.

    This per-class scheme is the one of Yurochkin et al. 2019, "Bayesian Nonparametric
    Federated Learning of Neural Networks" (arXiv 1905.12022), also used by Flower's
    DirichletPartitioner; Hsu et al. 2019 (arXiv 1909.06335) introduced Dirichlet label skew
    for federated benchmarks with equal-size clients (see `dirichlet_equal`).

    Deviations: no "self-balancing" (Flower stops feeding a client once it exceeds the mean
    size; not in the paper). If a client gets no sample, the whole draw is repeated, at most
    MAX_DIRICHLET_DRAWS times, then a DataError names the fix.
    """
    members = _class_members(labels)
    sizes = np.array([len(m) for m in members])
    alpha = np.full(num_clients, cfg.alpha)
    empty: list[int] = []
    for _ in range(MAX_DIRICHLET_DRAWS):
        counts = np.zeros((num_clients, len(members)), dtype=np.int64)
        for k, n_k in enumerate(sizes):
            bounds = np.floor(np.cumsum(rng.dirichlet(alpha))[:-1] * n_k).astype(np.int64)
            counts[:, k] = np.diff(np.concatenate([[0], np.minimum(bounds, n_k), [n_k]]))
        empty = np.flatnonzero(counts.sum(axis=1) == 0).tolist()
        if not empty:
            return _assign(members, counts, rng)
    raise DataError(
        f"dirichlet(alpha={cfg.alpha:g}) left clients {empty} without data in "
        f"{MAX_DIRICHLET_DRAWS} draws: raise data.alpha, lower `clients`, "
        "or use data.partition=dirichlet-equal"
    )


def dirichlet_equal(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, cfg: DataConfig
) -> list[np.ndarray]:
    """Label skew with equal client sizes: each client's class mix q_i ~ Dir(alpha * K * p).

    Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution for Federated
    Visual Classification" (arXiv 1909.06335): clients of equal size whose label distribution is
    q ~ Dir(alpha_paper * p), p the dataset's class distribution, K the number of classes. Here
    alpha_paper = K * data.alpha, so that balanced classes give Dir(alpha, ..., alpha), the
    convention of the `dirichlet` partition. Because E[q_i] = p, alpha -> infinity gives every
    client the global mix, like `iid`, also when classes are unbalanced.

    Algorithm (the handling of exhausted classes is ours; the paper does not describe one):
    1. Quotas: client i must receive floor/ceil(N / num_clients) samples (the first
       N % num_clients clients one more), exactly.
    2. q_i ~ Dir(alpha * K * p) over the K classes present, for every client.
    3. Passes until every quota is met. In each pass, clients are visited in a fresh random
       order; client i draws its whole outstanding need from Multinomial(need_i, q_i restricted
       to the classes that still have samples, renormalized) and takes min(drawn, left) of each
       class. If q_i puts no mass at all on the classes left, it is redrawn from the same
       Dirichlet restricted to them. Samples are taken without replacement, so a class runs
       out once; a pass either fills a client or exhausts a class, hence at most K + 1 passes.
    4. Which samples of a class each client gets is a uniform random choice (`_assign`).

    Small alpha gives each client one dominant class as long as that class has samples left;
    once it runs out, the client's remainder goes to its next-preferred classes.
    """
    members = _class_members(labels)
    left = np.array([len(m) for m in members], dtype=np.int64)
    need = _equal_sizes(len(labels), num_clients)
    num_classes = len(members)
    concentration = cfg.alpha * num_classes * left / left.sum()  # alpha * K * p
    mix = rng.dirichlet(concentration, size=num_clients)  # (clients, K)
    counts = np.zeros((num_clients, num_classes), dtype=np.int64)
    for _ in range(num_classes + 1):
        if not need.any():
            break
        for i in rng.permutation(num_clients):
            if need[i] == 0:
                continue
            weights = np.where(left > 0, mix[i], 0.0)
            if weights.sum() == 0:  # every class q_i wants is gone (alpha -> 0 puts exact zeros)
                mix[i, left > 0] = rng.dirichlet(concentration[left > 0])
                weights = np.where(left > 0, mix[i], 0.0)
            weights /= weights.max()  # first by the max: subnormal weights (alpha -> 0) stay exact
            take = np.minimum(rng.multinomial(need[i], weights / weights.sum()), left)
            counts[i] += take
            left -= take
            need[i] -= take.sum()
    assert not need.any() and not left.any(), "dirichlet-equal: quotas must use every sample"
    return _assign(members, counts, rng)


def shards(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, cfg: DataConfig
) -> list[np.ndarray]:
    """Pathological label skew by shards: McMahan et al. 2017, "Communication-Efficient
    Learning of Deep Networks from Decentralized Data" (arXiv 1602.05629), Section 3.

    Sort the samples by label, cut them into num_clients * shards_per_client contiguous shards
    (sizes differ by at most one), and give every client shards_per_client shards drawn at
    random without replacement (the paper: MNIST, 200 shards of 300, 2 per client).

    A shard holds one label when class sizes are multiples of the shard size (balanced MNIST in
    the paper); otherwise a shard that straddles a class boundary holds two or more, so a client
    holds at most shards_per_client labels only in the former case.
    """
    s = cfg.shards_per_client
    num_shards = num_clients * s
    if num_shards > len(labels):
        raise DataError(
            f"shards: {len(labels)} samples cannot be cut into {num_clients} clients x "
            f"{s} shards: lower data.shards_per_client or `clients`"
        )
    pieces = np.array_split(np.concatenate(_class_members(labels)), num_shards)
    dealt = rng.permutation(num_shards).reshape(num_clients, s)  # row i: client i's shards
    return [np.sort(np.concatenate([pieces[j] for j in row])) for row in dealt]


PARTITIONERS: dict[str, Partitioner] = {
    "iid": iid,
    "dirichlet": dirichlet,
    "dirichlet-equal": dirichlet_equal,
    "shards": shards,
}


def check_config(cfg: RunConfig) -> list[str]:
    """The config's partition name, checked against this registry."""
    if cfg.data.partition in PARTITIONERS:
        return []
    return [
        f"unknown data.partition {cfg.data.partition!r}; known: {', '.join(sorted(PARTITIONERS))}"
    ]


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
