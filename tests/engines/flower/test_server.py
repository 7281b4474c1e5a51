"""The Flower server and client apps over an in-process grid (messages really serialised).

These check the engine's logic in seconds; test_processes.py checks the same on real
SuperLink/SuperNode processes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from heronsfl.engines.flower import codec, deploy
from heronsfl.engines.flower.protocol import DeployError
from heronsfl.engines.simulation import Simulation
from heronsfl.engines.stream.certs import local_certificates
from heronsfl.errors import ConfigError, UserError
from heronsfl.federation import Federation
from heronsfl.metrics.log import read_metrics
from tests.conftest import TINY, tiny_config
from tests.engines.flower.conftest import algorithm_records, assert_same_models, node_configs


@pytest.mark.parametrize(
    "overrides",
    [
        ("algorithm=heron-sfl",),
        ("algorithm=heron-sfl", "zo.exchange=seeds", "train.server_order=client-by-client"),
        ("algorithm=cse-fsl", "comm.wire_dtype=fp16", "clients=4", "train.clients_per_round=2"),
        ("algorithm=fedavg",),
        ("algorithm=mezo", "comm.wire_dtype=bf16"),
        ("algorithm=sflv2", "clients=3"),
        ("algorithm=sflv1", "comm.wire_dtype=fp16"),
        ("algorithm=fsl-sage", "train.server_order=client-by-client"),
    ],
)
def test_flower_engine_equals_the_simulator(serve, overrides: tuple[str, ...]) -> None:
    # Prepare
    cfg = tiny_config("clients=2", *overrides)
    # Execute
    server, _ = serve(cfg)
    sim = Simulation(cfg)
    expected = sim.run()
    # Assert: same models bit for bit, same metrics (accuracy, losses, bytes, client costs)
    assert_same_models(server.core, sim)
    assert algorithm_records(read_metrics(server.opts.out)) == algorithm_records(expected)
    assert (Path(server.opts.out) / "summary.json").exists()


def test_the_stream_runs_over_tls_with_the_deploy_certificates(serve, tmp_path) -> None:
    # Prepare: throwaway certificates for 127.0.0.1, given as the deploy options.
    certs = local_certificates(tmp_path / "certs")
    cfg = tiny_config("clients=2", "rounds=1", "algorithm=sflv2")
    tls = {"stream_ca": str(certs.ca), "stream_cert": str(certs.cert), "stream_key": str(certs.key)}
    # Execute
    server, _ = serve(cfg, **tls)
    sim = Simulation(cfg)
    sim.run()
    # Assert: the clients verified the server with the CA they were sent, and computed the same.
    assert server.settings is not None and "BEGIN CERTIFICATE" in server.settings.ca_pem
    assert_same_models(server.core, sim)
    assert read_metrics(server.opts.out)[0]["deploy/clients"] == sim.algo.turn_order([0, 1], 1)


def test_serialised_bytes_are_the_payload_plus_a_bounded_overhead(serve) -> None:
    """Flower's + the stream's bytes = the algorithm's bytes + framing: < 1 KiB per Flower
    message + 512 B per tensor in it, < 256 B per stream frame."""
    # Prepare
    cfg = tiny_config("clients=2", "comm.wire_dtype=fp16", "model.width=16")
    # Execute
    server, grid = serve(cfg)
    last = read_metrics(server.opts.out)[-1]
    # Assert
    state = len(server.core.global_state)  # tensors in a model message
    uploads = cfg.train.local_steps // cfg.train.upload_every  # per client per round
    messages = len([n for _, nodes in grid.exchanges for n in nodes])  # handshakes included
    rounds = cfg.rounds * cfg.clients
    frames = {"uplink": rounds * (uploads + 1), "downlink": 0}  # uploads and each end frame
    for direction in ("uplink", "downlink"):
        algo = last[f"comm/{direction}_bytes"]
        sent = last[f"flower/{direction}_bytes"] + last[f"stream/{direction}_bytes"]
        bound = 1024 * messages + 512 * rounds * state + 256 * frames[direction]
        assert algo < sent <= algo + bound, direction
    # The activations travel on the stream, the models on Flower.
    steps = last["comm/up_activations_bytes"] + last["comm/up_labels_bytes"]
    assert steps < last["stream/uplink_bytes"] < steps + 256 * frames["uplink"]
    overhead = 1024 * messages + 512 * rounds * state
    assert last["flower/uplink_bytes"] < last["comm/up_model_bytes"] + overhead


def test_a_client_that_never_replies_is_dropped_and_logged(serve, caplog) -> None:
    # Prepare: node 2 (client 1) is gone after the handshake.
    cfg = tiny_config("clients=3", "rounds=2")
    # Execute
    server, grid = serve(cfg, silent={2}, stream_timeout_s=2.0)
    records = read_metrics(server.opts.out)
    # Assert
    assert [r["deploy/dropped_clients"] for r in records] == [[1], [1]]
    assert [r["deploy/clients"] for r in records] == [[0, 2], [0, 2]]
    assert "no reply from client(s) [1]" in caplog.text
    assert len(records) == cfg.rounds


def test_a_failing_client_is_dropped_with_its_reason(serve, caplog) -> None:
    cfg = tiny_config("clients=2", "rounds=1")
    nodes = node_configs(cfg)
    nodes[1]["data-path"] = "/nonexistent/client_1.npz"
    server, _ = serve(cfg, nodes=nodes)
    assert read_metrics(server.opts.out)[0]["deploy/dropped_clients"] == [1]
    assert "does not exist on this node" in caplog.text


def test_too_few_replies_stop_the_run(serve) -> None:
    cfg = tiny_config("clients=2", "rounds=1")
    with pytest.raises(DeployError, match="fewer than deploy.min_clients = 2"):
        serve(cfg, silent={1}, min_clients=2, stream_timeout_s=2.0)


def test_a_restarted_server_resumes_after_the_last_completed_round(serve, tmp_path) -> None:
    # Prepare: the server process dies while round 2's messages go out.
    cfg = tiny_config("clients=2", "rounds=3")
    calls = []

    def crash_in_round_2(kind: str, nodes: list[int]) -> None:
        calls.append(kind)
        if calls.count("train") == 2:
            raise RuntimeError("server killed")

    with pytest.raises(RuntimeError, match="server killed"):
        serve(cfg, before_send=crash_in_round_2)
    assert len(read_metrics(tmp_path / "run")) == 1
    # Execute: the same run again, on the same directory.
    server, grid = serve(cfg)
    # Assert: two rounds were left, and the result is the uninterrupted one.
    assert [kind for kind, _ in grid.exchanges] == ["query", "train", "train"]
    sim = Simulation(cfg)
    expected = sim.run()
    assert_same_models(server.core, sim)
    assert algorithm_records(read_metrics(tmp_path / "run")) == algorithm_records(expected)


def test_clients_holding_only_their_own_npz_compute_the_same(serve, tmp_path, capsys) -> None:
    # Prepare: `heronsfl deploy partition` writes one file per client.
    overrides = [*TINY, "clients=2", "rounds=1"]
    cfg = tiny_config(*overrides)
    args = [*overrides, "--out-dir", str(tmp_path / "parts")]
    assert deploy.main(["partition", *args]) == 0
    nodes = [
        {"partition-id": i, "data-path": str(tmp_path / "parts" / f"client_{i}.npz")}
        for i in range(2)
    ]
    with np.load(tmp_path / "parts" / "client_0.npz") as npz:
        assert len(npz["y"]) < len(Simulation(cfg).train_set)
    # Execute
    server, _ = serve(cfg, nodes=nodes)
    sim = Simulation(cfg)
    sim.run()
    # Assert
    assert_same_models(server.core, sim)
    assert "client_1.npz" in capsys.readouterr().out


@pytest.mark.parametrize("clients", [1, 2])
def test_deployed_ho_sfl_keeps_the_simulators_model(serve, clients: int) -> None:
    """HO-SFL's deployed clients each hold a copy of the one client model, kept in sync by the
    scalars on the stream. One client: the simulator's model bit for bit. Two: in the
    simulator client 1 probes θ after client 0's probes have left their rounding on it
    (θ + μu − μu), so the models agree to rounding; BatchNorm statistics are each client's."""
    # Prepare
    cfg = tiny_config(f"clients={clients}", "algorithm=ho-sfl", "zo.num_probes=2")
    # Execute
    server, _ = serve(cfg)
    sim = Simulation(cfg)
    expected = sim.run()
    # Assert
    init = Federation(cfg).global_state
    for key, _ in sim.model.client.named_parameters():
        got, want = server.core.global_state[f"client.{key}"], sim.global_state[f"client.{key}"]
        moved = float((want - init[f"client.{key}"]).abs().max())
        assert moved > 0, key  # the clients trained
        if clients == 1:
            assert torch.equal(got, want), key
        else:
            assert float((got - want).abs().max()) < 1e-2 * moved, key
    for key, value in sim.model.server.state_dict().items():
        got = server.core.model.server.state_dict()[key]
        assert torch.equal(got, value) if clients == 1 else torch.allclose(got, value, atol=1e-5)
    records = read_metrics(server.opts.out)
    assert [r["deploy/clients"] for r in records] == [list(range(clients))] * cfg.rounds
    for got, want in zip(records, expected, strict=True):  # P fp32 scalars each way per step
        assert got["comm/up_zo_scalars_bytes"] == want["comm/up_zo_scalars_bytes"]
        assert got["comm/down_zo_scalars_bytes"] == want["comm/down_zo_scalars_bytes"]


def test_deploy_app_writes_a_flower_app_with_the_whole_config(tmp_path, capsys) -> None:
    # Execute
    args = ["demo_cnn_digits", "rounds=3", "--app-dir", str(tmp_path / "app")]
    assert deploy.main(["app", *args, "--out", str(tmp_path / "run"), "--min-clients", "4"]) == 0
    # Assert
    text = (tmp_path / "app" / "pyproject.toml").read_text()
    assert 'serverapp = "heronsfl.engines.flower.server_app:app"' in text
    assert "\nrounds = 3\n" in text and "\nmin_clients = 4\n" in text
    assert "flwr run" in capsys.readouterr().out
    with pytest.raises(UserError, match="must be an absolute path"):
        deploy.main(["app", *args, "--out", "relative/run"])
    # Deploy options are deploy.KEY=VALUE overrides, validated before anything is written.
    out = [*args, "--out", str(tmp_path / "run"), "--overwrite"]
    assert deploy.main(["app", "deploy.window=4", "deploy.stream_timeout_s=9", *out]) == 0
    text = (tmp_path / "app" / "pyproject.toml").read_text()
    assert "\nwindow = 4\n" in text and "\nstream_timeout_s = 9.0\n" in text
    for bad, message in [
        ("deploy.window=0", "deploy.window = 0 must be >= 1"),
        ("deploy.window=two", "must be a int"),
        ("deploy.windows=2", "unknown deploy option 'deploy.windows'"),
        ("deploy.stream_cert=/x.pem", "go together"),
    ]:
        with pytest.raises(ConfigError, match=message):
            deploy.main(["app", bad, *out])


def test_only_own_modules_persist_on_a_node_and_travel_only_when_new(serve, monkeypatch) -> None:
    # Prepare: FSL-SAGE re-aligns each client's own aux head on the server after round 2.
    sent: list[tuple[int, int]] = []
    encode = codec.encode_request

    def spy(req):
        if req.personal is not None:
            sent.append((req.round, req.client_id))
        return encode(req)

    monkeypatch.setattr(codec, "encode_request", spy)
    cfg = tiny_config("clients=2", "rounds=3", "algorithm=fsl-sage", "fsl_sage.align_every=2")
    # Execute
    server, grid = serve(cfg)
    sim = Simulation(cfg)
    sim_records = sim.run()
    # Assert: sent once, with round 3, then kept in the SuperNode's persistent context.
    assert sent == [(3, 0), (3, 1)]
    assert all(list(ctx.state) == ["heronsfl.personal"] for ctx in grid.contexts.values())
    assert_same_models(server.core, sim)
    assert algorithm_records(read_metrics(server.opts.out)) == algorithm_records(sim_records)
