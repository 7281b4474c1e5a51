from __future__ import annotations

import pytest
import torch

from heronsfl.engines.simulation import Simulation
from tests.conftest import tiny_config


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("estimator", ["one-sided", "central"])
@pytest.mark.parametrize("algorithm", ["heron-sfl", "mezo"])
def test_replaying_seeds_gives_the_uploaded_parameters(
    algorithm: str, estimator: str, optimizer: str
) -> None:
    # Prepare: fp32 wire, so uploading parameters loses nothing and the two must agree exactly.
    common = (
        f"algorithm={algorithm}",
        f"zo.estimator={estimator}",
        f"client_optim.name={optimizer}",
        "zo.num_probes=2",
        "rounds=2",
    )
    params = Simulation(tiny_config(*common))
    seeds = Simulation(tiny_config(*common, "zo.exchange=seeds"))
    # Execute
    rp, rs = params.run(), seeds.run()
    # Assert: same global model (replay re-runs the client's exact operations)...
    for key, value in params.global_state.items():
        torch.testing.assert_close(seeds.global_state[key], value, rtol=0, atol=0)
    assert rp[-1]["test/accuracy"] == rs[-1]["test/accuracy"]
    # ...for a per-round upload of h * (8 + 4q) bytes of seeds and scalars plus the buffers.
    h, q, clients, rounds = 6, 2, 3, 2
    assert rs[-1]["comm/up_zo_seeds_scalars_bytes"] == rounds * clients * h * (8 + 4 * q)
    buffers = sum(
        t.numel() * t.element_size() for m in seeds.averaged().values() for t in m.buffers()
    )
    assert rs[-1]["comm/up_model_bytes"] == rounds * clients * buffers
    assert rp[-1]["comm/up_model_bytes"] > 50 * rs[-1]["comm/up_model_bytes"]


def test_seeds_exchange_needs_a_zeroth_order_client() -> None:
    from heronsfl.errors import ConfigError

    with pytest.raises(ConfigError, match="zo.exchange = 'seeds' needs a zeroth-order client"):
        tiny_config("algorithm=cse-fsl", "zo.exchange=seeds")
