"""An algorithm defined outside heronsfl runs in both engines without touching them.

`LossMix` lives in this file only: a local-loss client (first-order, aux head, decoupled like
CSE-FSL) that also sends its mean local loss as an exchange tensor, and a Fed-Server that
weights clients by inverse loss and moves the global state only `loss_mix.step` of the way to
that average. It declares its own config section, `[loss_mix]`, and joins through the public
`register_algorithm`; nothing under src/heronsfl/engines/ knows about it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import Tensor, nn

from heronsfl.aggregation import WeightedAverage
from heronsfl.algorithms import ALGORITHMS, register_algorithm
from heronsfl.algorithms.base import ClientState, FedRound, SplitAlgorithm, head_loss
from heronsfl.config import config_field
from heronsfl.engines.simulation import Simulation
from heronsfl.errors import ConfigError
from heronsfl.messages import Batch, ClientResult, Upload
from heronsfl.metrics.log import read_metrics
from tests.conftest import tiny_config
from tests.engines.flower.conftest import algorithm_records, assert_same_models


@dataclass(frozen=True)
class LossMixConfig:
    step: float = config_field(0.5, "fraction of the way to the clients' average", check=">0")


class LossMix(SplitAlgorithm):
    name: ClassVar[str] = "loss-mix"
    summary: ClassVar[str] = "toy: FO local loss, inverse-loss weights, damped Fed-Server step"
    sends_gradients: ClassVar[bool] = False
    uses_aux_head: ClassVar[bool] = True
    config_section: ClassVar[str | None] = "loss_mix"
    Config: ClassVar[type[LossMixConfig]] = LossMixConfig
    exchange_kind: ClassVar[str] = "mean_loss"

    def client_step(self, c: ClientState, batch: Batch) -> Upload | None:
        assert c.aux is not None and c.optimizer is not None, "an FO client with an aux head"
        acts = c.model(batch.x)
        loss = head_loss(c.aux, acts, batch.y)
        c.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        c.optimizer.step()
        c.losses.append(loss.item())
        return self._upload(c, acts, batch.y) if self.uploads_at(c.step) else None

    def client_payload(
        self, c: ClientState, modules: dict[str, nn.Module]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        state, _ = super().client_payload(c, modules)
        return state, {"mean_loss": torch.tensor([sum(c.losses) / len(c.losses)])}

    def aggregate(self, fed: FedRound, results: Sequence[ClientResult]) -> dict[str, Tensor]:
        avg = WeightedAverage()
        for r in results:
            avg.add(r.state, 1.0 / float(r.exchange["mean_loss"]))
        target = avg.result(like=fed.global_state)
        step = self.own_config.step
        return {
            k: v + step * (target[k] - v) if v.is_floating_point() else target[k]
            for k, v in fed.global_state.items()
        }


@pytest.fixture
def loss_mix() -> Iterator[None]:
    register_algorithm(LossMix)
    yield
    del ALGORITHMS[LossMix.name]


def test_a_toy_algorithm_runs_in_the_simulator_with_its_own_section(loss_mix) -> None:
    # Prepare
    cfg = tiny_config("algorithm=loss-mix", "loss_mix.step=0.25")
    # Execute
    a, b = Simulation(cfg), Simulation(tiny_config("algorithm=loss-mix"))
    records, _ = a.run(), b.run()
    # Assert: the section reached the algorithm, the exchange was counted, the model learned
    assert a.algo.own_config.step == 0.25 and b.algo.own_config.step == 0.5
    assert any(not torch.equal(v, b.global_state[k]) for k, v in a.global_state.items())
    mean_loss_bytes = cfg.rounds * cfg.clients * 4  # one fp32 scalar per client and round
    assert records[-1]["comm/up_mean_loss_bytes"] == mean_loss_bytes
    assert records[-1]["aux/accuracy"] > 0.1
    with pytest.raises(ConfigError, match="did you mean 'step'"):
        tiny_config("algorithm=loss-mix", "loss_mix.stepp=1")


def test_a_toy_algorithm_runs_over_flower_as_in_the_simulator(loss_mix, serve) -> None:
    # Prepare
    cfg = tiny_config("algorithm=loss-mix", "clients=2", "loss_mix.step=0.75")
    # Execute
    server, _ = serve(cfg)
    sim = Simulation(cfg)
    expected = sim.run()
    # Assert: bit-identical models and the same metrics, the exchange decoded from Flower
    assert_same_models(server.core, sim)
    assert algorithm_records(read_metrics(server.opts.out)) == algorithm_records(expected)
