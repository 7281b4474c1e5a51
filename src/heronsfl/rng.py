"""The seed tree: every random stream in a run is derived from (seed, purpose, indices...).

Streams never share state, so adding a client, a probe or a round never shifts another stream,
and a Flower client can rebuild exactly the stream the simulator would use.
"""

from __future__ import annotations

import threading
import zlib

import numpy as np
import torch

# Held while a model is initialised from the (process-wide) global RNG, which `fork_rng` +
# `manual_seed` reseed: two threads building models at once would draw from each other's stream.
INIT_LOCK = threading.RLock()


def _key(part: int | str) -> int:
    if isinstance(part, str):
        return zlib.crc32(part.encode())
    if part < 0:
        raise ValueError(f"seed-tree indices must be >= 0, got {part}")
    return int(part)


def derive_seed(seed: int, *path: int | str) -> int:
    """A 63-bit seed for the stream named by `path` under the run seed `seed`."""
    seq = np.random.SeedSequence(entropy=int(seed), spawn_key=tuple(_key(p) for p in path))
    return int(seq.generate_state(1, np.uint64)[0] >> np.uint64(1))


def generator(seed: int, *path: int | str, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator seeded from the seed tree (see `derive_seed`)."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *path))
    return g


def numpy_rng(seed: int, *path: int | str) -> np.random.Generator:
    """A NumPy Generator seeded from the seed tree (partitions, client sampling)."""
    return np.random.default_rng(derive_seed(seed, *path))
