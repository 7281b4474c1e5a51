"""The codec: tensors and messages survive Flower's serialisation; nothing is unpickled."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.config import get_fused_config_from_dir, parse_config_args
from flwr.supercore.task_identity import TaskIdentity

from heronsfl.engines.flower import codec
from heronsfl.engines.flower.deploy import write_app
from heronsfl.engines.flower.protocol import DeployOptions, NodeSettings, RoundRequest
from heronsfl.errors import ConfigError
from heronsfl.messages import ClientResult, StepCost, Upload
from heronsfl.metrics.comm import CommCounter
from tests.conftest import tiny_config
from tests.engines.flower.local_grid import transmit


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    """Messages take their sender from the process's task identity (a ServerApp's, here)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0


def _over_the_wire(content: RecordDict) -> RecordDict:
    return transmit(Message(content, dst_node_id=1, message_type=codec.TRAIN)).content


@pytest.mark.parametrize(
    "tensor",
    [
        torch.randn(3, 4),
        torch.randn(2, 5).half(),
        torch.randn(4, 2).bfloat16(),
        torch.randn(0, 3).bfloat16(),
        torch.arange(6).reshape(2, 3),
        torch.tensor(7),  # a 0-d buffer (BatchNorm's num_batches_tracked)
        torch.randn(4, 6)[:, ::2],  # not contiguous
    ],
)
def test_tensors_round_trip_bit_for_bit(tensor: torch.Tensor) -> None:
    back = codec.array_to_tensor(codec.tensor_to_array(tensor), "t")
    assert back.dtype == tensor.dtype and back.shape == tensor.shape
    assert torch.equal(back, tensor)


def test_request_and_reply_survive_serialisation() -> None:
    # Prepare
    state = {"client.0.weight": torch.randn(4, 1, 3, 3).half(), "client.1.n": torch.tensor(3)}
    comm = CommCounter()
    comm.add("up", "activations", [torch.zeros(8, 4)])
    reply = ClientResult(
        client_id=1,
        num_samples=40,
        state=state,
        exchange={"seeds": torch.tensor([5, 9], dtype=torch.int64), "scalars": torch.randn(2, 1)},
        losses=[2.3, 2.1],
        comm=comm,
        step_cost=StepCost(100, 2000, 64, 0),
        uploads=[Upload(1, torch.randn(8, 4).half(), torch.arange(8)) for _ in range(2)],
        round_trips_s=[0.004, 0.0051],
        peak_rss_bytes=3 << 30,
    )
    # Execute
    req = codec.decode_request(
        _over_the_wire(codec.encode_request(RoundRequest(3, 1, True, state)))
    )
    back = codec.decode_reply(_over_the_wire(codec.encode_reply(reply)))
    # Assert
    assert (req.round, req.client_id, req.measure) == (3, 1, True)
    assert all(torch.equal(req.state[k], v) for k, v in state.items())
    assert (back.client_id, back.num_samples, back.losses) == (1, 40, [2.3, 2.1])
    assert back.step_cost == reply.step_cost and back.comm.bytes == comm.bytes
    assert (back.round_trips_s, back.peak_rss_bytes) == ([0.004, 0.0051], 3 << 30)
    assert len(back.uploads) == 2 and back.uploads[1].client_id == 1
    assert torch.equal(back.uploads[0].activations, reply.uploads[0].activations)
    assert back.exchange.keys() == reply.exchange.keys()
    assert all(torch.equal(back.exchange[k], v) for k, v in reply.exchange.items())
    assert codec.decode_hello_reply(_over_the_wire(codec.encode_hello_reply(4))) == 4


def test_a_pickled_payload_is_refused_not_loaded() -> None:
    # An object array serialises as a pickle inside .npy; loading it would run code.
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    buf = io.BytesIO()
    np.save(buf, np.array([Boom()], dtype=object), allow_pickle=True)
    evil = Array(dtype="object", shape=(1,), stype="numpy.ndarray", data=buf.getvalue())
    content = codec.encode_request(RoundRequest(1, 0, False, {"w": torch.zeros(2)}))
    content["heronsfl.global"] = ArrayRecord({"w": evil})
    with pytest.raises(codec.ProtocolError, match="not a plain array"):
        codec.decode_request(_over_the_wire(content))
    raw = Array(dtype="x", shape=(1,), stype="pickle", data=pickle.dumps(Boom()))
    with pytest.raises(codec.ProtocolError, match="unknown array serialisation"):
        codec.array_to_tensor(raw, "w")


def test_a_reply_from_another_version_is_named_as_such() -> None:
    with pytest.raises(codec.ProtocolError, match="same heronsfl version"):
        codec.decode_reply(RecordDict({"other": ConfigRecord({})}))


def test_run_config_is_the_heronsfl_config_and_flower_overrides_reach_it(tmp_path) -> None:
    # Prepare: the app `heronsfl deploy app` writes, read back exactly as Flower does.
    cfg = tiny_config("model.cut=block1", "zo.mu=0.002")
    opts = DeployOptions(out="/srv/run", round_timeout_s=30.0, min_clients=2)
    write_app(tmp_path, cfg, opts)
    override = parse_config_args(["train.local_steps=3 deploy.round_timeout_s=5 rounds=7"])
    # Execute
    same = codec.settings_from_run_config(get_fused_config_from_dir(tmp_path, {}))
    changed = codec.settings_from_run_config(get_fused_config_from_dir(tmp_path, override))
    # Assert
    assert same == (cfg, opts)
    assert changed[0].train.local_steps == 3 and changed[0].rounds == 7
    assert changed[1].round_timeout_s == 5.0


def test_bad_run_config_values_are_config_errors() -> None:
    flat = {"rounds": 2, "train.upload_every": 9, "train.local_steps": 3, "deploy.out": "/x"}
    with pytest.raises(ConfigError, match="train.upload_every"):
        codec.settings_from_run_config(flat)
    with pytest.raises(ConfigError, match="deploy.min_clients = 0 must be >= 1"):
        codec.settings_from_run_config({"deploy.out": "/x", "deploy.min_clients": 0})
    with pytest.raises(ConfigError, match="unknown run config key 'deploy.retries'"):
        codec.settings_from_run_config({"deploy.out": "/x", "deploy.retries": 3})


def test_node_config() -> None:
    text = codec.node_config_text(NodeSettings(2, 5, data_path="/data/client_2.npz"))
    parsed = parse_config_args([text])
    assert codec.node_settings(parsed) == NodeSettings(2, 5, "", "/data/client_2.npz")
    with pytest.raises(ConfigError, match="every SuperNode needs its client id"):
        codec.node_settings({"num-partitions": 5})
    with pytest.raises(ConfigError, match="unknown node config key 'partition'"):
        codec.node_settings({"partition": 1, "partition-id": 1})
