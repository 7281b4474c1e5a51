"""A client's mini-batch stream for one round: stateless, so any engine rebuilds it exactly."""

from __future__ import annotations

import numpy as np
import torch


def round_batches(
    indices: np.ndarray, batch_size: int, steps: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """`steps` index batches drawn without replacement, reshuffling whenever the data runs out.

    A client with fewer samples than `batch_size` uses all of its samples in every batch.
    """
    n = len(indices)
    size = min(batch_size, n)
    pool = torch.as_tensor(indices, dtype=torch.long)
    batches: list[torch.Tensor] = []
    order = pool[torch.randperm(n, generator=generator)]
    pos = 0
    for _ in range(steps):
        if pos + size > n:  # epoch boundary: drop the tail, reshuffle
            order = pool[torch.randperm(n, generator=generator)]
            pos = 0
        batches.append(order[pos : pos + size])
        pos += size
    return batches
