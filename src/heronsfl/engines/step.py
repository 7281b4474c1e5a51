"""One client local step as every engine runs it, and the same step measured.

A synchronous algorithm's step spans client -> server -> client; only the client's parts are
measured (the server runs in the same process here but is not the client's cost). The gradient
that "arrives" from the server is counted as client memory from the moment it is received.
"""

from __future__ import annotations

from collections.abc import Callable

from heronsfl.algorithms.base import ClientState, ServerState, SplitAlgorithm
from heronsfl.messages import Batch, Download, StepCost, Upload
from heronsfl.metrics.flops import FlopCounterMode  # with the CPU attention formulas
from heronsfl.metrics.memory import PeakMemoryTracker

# Who answers a synchronous step: the main server in this process, or a remote one reached
# through a function (a networked client: send the upload, return the server's answer).
Server = ServerState | Callable[[Upload], Download]


def answer(algo: SplitAlgorithm, server: Server | None, up: Upload | None) -> Download:
    """The main server's answer to a synchronous step's upload."""
    assert up is not None and server is not None, "a synchronous step needs the server"
    down = algo.server_step(server, up) if isinstance(server, ServerState) else server(up)
    assert down is not None, "a synchronous server answers every upload"
    return down


def local_step(
    algo: SplitAlgorithm, c: ClientState, batch: Batch, server: Server | None
) -> tuple[Upload | None, Download | None]:
    """One step; `server` is needed (and called) only by synchronous algorithms."""
    up = algo.client_step(c, batch)
    down = None
    if algo.sends_gradients:
        down = answer(algo, server, up)
        algo.client_apply(c, down)
    return up, down


def measure_local_step(
    algo: SplitAlgorithm, c: ClientState, batch: Batch, server: Server | None
) -> tuple[Upload | None, Download | None, StepCost]:
    """`local_step` under a live-tensor peak-memory tracker and a FLOP counter (client parts)."""
    tracker = PeakMemoryTracker()
    mods = [m for m in (c.model, c.aux) if m is not None]
    tracker.track(*mods, batch.x, batch.y)
    for opt in (c.optimizer, c.aux_optimizer):
        if opt is not None:
            tracker.track(opt)
    flops = 0
    down = None
    with tracker:
        with FlopCounterMode(display=False) as fc:
            up = algo.client_step(c, batch)
        flops += fc.get_total_flops()
        if algo.sends_gradients:
            with tracker.paused():
                down = answer(algo, server, up)
            tracker.track(down.gradient)  # received over the network: now client memory
            with FlopCounterMode(display=False) as fc:
                algo.client_apply(c, down)
            flops += fc.get_total_flops()
    up_bytes = 0 if up is None else up.activations.nbytes + up.labels.nbytes
    down_bytes = 0 if down is None else down.gradient.nbytes
    return up, down, StepCost(tracker.peak_bytes, int(flops), up_bytes, down_bytes)
