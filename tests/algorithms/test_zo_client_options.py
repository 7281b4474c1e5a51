from __future__ import annotations

import pytest
import torch

from heronsfl.algorithms import get_algorithm
from heronsfl.algorithms.base import ClientState
from heronsfl.engines.simulation import Simulation
from heronsfl.errors import ConfigError
from heronsfl.messages import Batch
from heronsfl.tasks import build_split_model
from tests.conftest import tiny_config


@pytest.mark.parametrize(
    "options",
    [
        ("zo.perturbation=lowrank", "client_optim.name=sgd", "zo.v_every=4"),
        ("zo.perturbation=lowrank", "client_optim.name=sgd", "client_optim.momentum=0.9"),
        ("zo.perturbation=sparse", "client_optim.name=signsgd", "client_optim.momentum=0.5"),
        ("zo.perturbation=sparse-magnitude", "client_optim.name=adam"),
        ("zo.perturbation=block", "client_optim.name=sgd", "client_optim.momentum=0.9"),
        ("zo.probe_batch=batched", "zo.estimator=central", "client_optim.name=sgd"),
    ],
)
def test_structured_options_replay_bit_exactly_from_seeds(options: tuple[str, ...]) -> None:
    # Prepare: fp32 wire (tiny_config), so params and seeds exchanges must agree exactly.
    common = (*options, "zo.num_probes=2", "rounds=1", "train.local_steps=4")
    params = Simulation(tiny_config(*common))
    seeds = Simulation(tiny_config(*common, "zo.exchange=seeds"))
    # Execute
    params.run()
    seeds.run()
    # Assert: the replayed global model equals the uploaded one bit for bit, and it moved.
    start = Simulation(tiny_config(*common)).global_state
    moved = False
    for key, value in params.global_state.items():
        torch.testing.assert_close(seeds.global_state[key], value, rtol=0, atol=0)
        moved |= key.startswith("client.") and not torch.equal(value, start[key])
    assert moved


def _client(*overrides: str) -> tuple[ClientState, object, Batch]:
    cfg = tiny_config(*overrides)
    algo = get_algorithm(cfg.algorithm)(cfg)
    model = build_split_model(cfg, with_aux=True)
    c = ClientState(0, 1, model.client, model.aux, None)
    c.optimizer = algo.new_client_optimizer(c)
    g = torch.Generator().manual_seed(0)
    batch = Batch(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g))
    return c, algo, batch


@pytest.mark.parametrize("frozen", [False, True])
def test_hybrid_client_trains_the_aux_head_first_order(frozen: bool) -> None:
    c, algo, batch = _client(
        "zo.aux_update=backprop",
        "zo.aux_lr=1e-2",
        "client_optim.name=sgd",
        f"model.freeze_client={frozen}",
    )
    assert c.aux is not None and c.aux_optimizer is not None
    client0 = [p.clone() for p in c.model.parameters()]
    aux0 = [p.clone() for p in c.aux.parameters()]
    losses = []
    for step in range(5):
        c.step = step
        algo.client_step(c, batch)  # type: ignore[attr-defined]
        losses.append(c.losses[-1])
    # First-order Adam on one batch: the aux loss falls fast; every aux weight moved.
    assert losses[-1] < 0.8 * losses[0]
    assert all(not torch.equal(a, b) for a, b in zip(aux0, c.aux.parameters(), strict=True))
    # The client sub-model moves by ZO only (frozen: not at all); no gradient is left behind.
    same = [torch.equal(a, b) for a, b in zip(client0, c.model.parameters(), strict=True)]
    assert all(same) if frozen else not all(same)
    assert all(p.grad is None for p in [*c.model.parameters(), *c.aux.parameters()])
    # The probes covered the client sub-model only: q scalars per step (none when frozen).
    assert [len(s) for _, s in c.zo_record] == [0 if frozen else 1] * 5


def test_hybrid_client_memory_stays_far_below_cse_fsl() -> None:
    """The aux backward starts at the cut activation: no client activation is stored."""
    from heronsfl.bench import resources

    names = ["heron-sfl", "cse-fsl"]
    rows = {r["label"]: r for r in resources("resnet18-cifar10", batch_size=16, algorithms=names)}
    hybrid = resources(
        "resnet18-cifar10",
        batch_size=16,
        algorithms=["heron-sfl"],
        overrides=["zo.aux_update=backprop"],
    )[0]
    heron, cse = (
        rows["heron-sfl"]["client_peak_mem_bytes"],
        rows["cse-fsl"]["client_peak_mem_bytes"],
    )
    # With Adam on both (the default), HERON's ZO Adam already holds a gradient and two
    # moments for the aux head, and the aux backward's only saved input is the cut activation
    # the step holds anyway for its upload: the hybrid's peak is no higher than HERON's.
    assert hybrid["client_peak_mem_bytes"] <= heron
    assert hybrid["client_peak_mem_bytes"] < 0.75 * cse
    # Compute: HERON's two forwards plus the aux weight gradient (one aux-forward's worth: the
    # activation needs no gradient).
    aux_macs = 16 * 64 * 32 * 32 * 10
    assert hybrid["client_macs_per_step"] == rows["heron-sfl"]["client_macs_per_step"] + aux_macs


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("algorithm=cse-fsl", "client_optim.name=signsgd"), "needs a zeroth-order client"),
        (("server_optim.name=signsgd",), "server_optim.name = 'signsgd'"),
        (("zo.aux_update=backprop", "zo.exchange=seeds"), "cannot replay a first-order aux"),
        (("algorithm=mezo", "zo.aux_update=backprop"), "with an aux head"),
        (("zo.perturbation=lowrank", "zo.distribution=sphere"), "zo.distribution=gaussian"),
        (("zo.density=1.5",), "zo.density = 1.5 must be in (0, 1]"),
        (("zo.perturbation=diagonal",), "zo.perturbation = 'diagonal' is not one of"),
    ],
)
def test_zo_options_that_do_not_fit_are_config_errors(
    overrides: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiny_config(*overrides)


def test_ho_sfl_uses_the_structured_directions() -> None:
    fast = ("algorithm=ho-sfl", "rounds=1", "train.local_steps=2", "clients=2")
    dense = Simulation(tiny_config(*fast))
    low = Simulation(tiny_config(*fast, "zo.perturbation=lowrank"))
    dense.run()
    low.run()
    key = next(k for k in dense.global_state if k.startswith("client.") and "weight" in k)
    assert not torch.equal(dense.global_state[key], low.global_state[key])


@pytest.mark.parametrize("estimator", ["one-sided", "central"])
def test_batched_probes_give_the_sequential_estimates(estimator: str) -> None:
    """One vmapped forward over q perturbed copies = q forwards on θ perturbed in place, up to
    float rounding (the in-place round trips and the batched kernels round differently)."""
    records = {}
    for mode in ["sequential", "batched"]:
        c, algo, batch = _client(
            f"zo.probe_batch={mode}", "zo.num_probes=3", f"zo.estimator={estimator}"
        )
        for step in range(2):
            c.step = step
            algo.client_step(c, batch)  # type: ignore[attr-defined]
        records[mode] = torch.tensor([g for _, g in c.zo_record])
    torch.testing.assert_close(records["batched"], records["sequential"], rtol=1e-3, atol=1e-3)
    assert records["batched"].shape == (2, 3)


def test_bench_zo_options_rows(capsys: pytest.CaptureFixture[str]) -> None:
    from heronsfl.bench import ZO_OPTIONS
    from heronsfl.cli import main

    args = ["bench", "resources", "--task", "cnn-digits", "--batch-size", "8", "--json"]
    assert main([*args, "--algorithms", "heron-sfl", "--zo-options"]) == 0
    import json

    rows = {r["label"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"heron-sfl", "heron-sfl (seeds)", *(f"heron {k}" for k in ZO_OPTIONS)}
    macs = {k: r["client_macs_per_step"] for k, r in rows.items()}
    # q = 4 one-sided probes: 5 forwards instead of 2, batched or not; central (antithetic
    # pairs): 8, plus a client-only forward for the upload.
    fwd = macs["heron-sfl"] / 2
    assert macs["heron q=4"] == macs["heron q=4 batched"] == 5 * fwd
    assert 8 * fwd < macs["heron q=4 central"] < 9 * fwd
    mem = {k: r["client_peak_mem_bytes"] for k, r in rows.items()}
    # Structured directions and in-place ZO-SGD store nothing parameter-sized; Adam does.
    assert mem["heron lozo-m"] < mem["heron zo-sgd-m"] < mem["heron-sfl"]
