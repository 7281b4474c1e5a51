"""Flower records <-> heronsfl messages: the only module that knows Flower's string keys.

Everything that crosses the network is plain data: tensors travel as Flower `Array`s (NumPy's
.npy format, loaded with allow_pickle=False; bfloat16, which NumPy lacks, as raw bytes), and
scalars as `ConfigRecord` values. Nothing received is ever unpickled.

This module also owns the two configuration mappings with Flower:
- `RunConfig` + `DeployOptions` <-> Flower's run config (`app_config` writes it into the app's
  pyproject.toml; `settings_from_run_config` reads it back): the run config *is* the heronsfl
  config, flattened with dots (`train.local_steps`), plus `deploy.*`.
- A SuperNode's node config (`partition-id=0 num-partitions=5 ...`) -> `NodeSettings`.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from torch import Tensor

from heronsfl import __version__
from heronsfl.config import RunConfig, to_dict
from heronsfl.engines.flower.protocol import (
    DeployOptions,
    NodeSettings,
    RoundRequest,
    StreamSettings,
)
from heronsfl.errors import ConfigError
from heronsfl.messages import ClientResult, StepCost, Upload
from heronsfl.metrics.comm import CommCounter
from heronsfl.registry import config_from_dict

# Message types: the round exchange goes to the ClientApp's @app.train(), the handshake that
# asks a SuperNode which client it is goes to @app.query().
TRAIN = "train"
HELLO = "query"

# Records inside a message's RecordDict.
_ROUND = "heronsfl.round"  # ConfigRecord: round, client_id, measure
_GLOBAL = "heronsfl.global"  # ArrayRecord: global client (+ aux) state
_PERSONAL = "heronsfl.personal"  # ArrayRecord: a client's own modules (also in its context)
_RESULT = "heronsfl.result"  # ConfigRecord: ids, sizes, losses, byte counts, step cost
_STATE = "heronsfl.state"  # ArrayRecord: the client's state after its round
_UPLOADS = "heronsfl.uploads"  # ArrayRecord: activations.{i}, labels.{i}
_EXCHANGE = "heronsfl.exchange"  # ArrayRecord: the algorithm's exchange (seeds, scalars)
_HELLO = "heronsfl.hello"  # ConfigRecord: partition_id
_STREAM = "heronsfl.stream"  # ConfigRecord: the per-step stream's address, secret, window, CA

# Node config keys (flower-supernode --node-config "partition-id=0 num-partitions=5").
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
DATA_ROOT = "data-root"
DATA_PATH = "data-path"
_NODE_KEYS = (PARTITION_ID, NUM_PARTITIONS, DATA_ROOT, DATA_PATH)

# The run config table for the server's own options.
_DEPLOY = "deploy"

# Components of the Flower app (module:attribute, imported from the installed heronsfl).
SERVER_APP = "heronsfl.engines.flower.server_app:app"
CLIENT_APP = "heronsfl.engines.flower.client_app:app"

_NUMPY_STYPE = "numpy.ndarray"  # Flower's own serialisation of Array(ndarray)
_RAW_BF16_STYPE = "heronsfl.bfloat16.raw"  # little-endian bfloat16 bytes, C order
_ALLOWED_DTYPES = {
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.uint8,
    torch.bool,
}


class ProtocolError(ValueError):
    """A message that does not have the shape this version of heronsfl sends."""


# ----------------------------------------------------------------------------- tensors


def tensor_to_array(t: Tensor) -> Array:
    """A tensor as a Flower Array, bit for bit, in its own dtype."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        raw = t.view(torch.int16).numpy().tobytes()
        return Array(dtype="bfloat16", shape=tuple(t.shape), stype=_RAW_BF16_STYPE, data=raw)
    return Array(t.numpy())


def array_to_tensor(a: Array, what: str) -> Tensor:
    """The tensor an Array holds; raises ProtocolError for anything but plain numeric data."""
    if a.stype == _NUMPY_STYPE:
        try:
            nd = a.numpy()  # np.load(allow_pickle=False): object arrays are refused
        except ValueError as e:
            raise ProtocolError(f"{what}: not a plain array ({e})") from None
        if nd.dtype.byteorder == ">" or not nd.flags.c_contiguous or not nd.flags.writeable:
            nd = nd.astype(nd.dtype.newbyteorder("="), order="C")  # keeps 0-d shapes
        t = torch.from_numpy(nd)
    elif a.stype == _RAW_BF16_STYPE:
        count = int(np.prod(a.shape)) if len(a.shape) else 1
        if len(a.data) != 2 * count:
            raise ProtocolError(f"{what}: {len(a.data)} bytes for bfloat16 shape {a.shape}")
        t = torch.empty(a.shape, dtype=torch.bfloat16)
        if count:  # frombuffer refuses an empty buffer
            raw = torch.frombuffer(bytearray(a.data), dtype=torch.int16)
            t = raw.view(torch.bfloat16).reshape(a.shape)
    else:
        raise ProtocolError(f"{what}: unknown array serialisation {a.stype!r}")
    if t.dtype not in _ALLOWED_DTYPES:
        raise ProtocolError(f"{what}: dtype {t.dtype} is not a tensor dtype heronsfl sends")
    return t


def state_to_record(state: Mapping[str, Tensor]) -> ArrayRecord:
    return ArrayRecord({k: tensor_to_array(v) for k, v in state.items()})


def record_to_state(record: ArrayRecord, what: str) -> dict[str, Tensor]:
    return {k: array_to_tensor(a, f"{what}[{k!r}]") for k, a in record.items()}


# ----------------------------------------------------------------------------- messages


def _get(content: RecordDict, key: str, kind: type, what: str) -> Any:
    if key not in content:
        raise ProtocolError(
            f"{what} lacks record {key!r}: do the server and the SuperNode run the same "
            f"heronsfl version ({__version__} here)?"
        )
    record = content[key]
    if not isinstance(record, kind):
        raise ProtocolError(f"{what}: record {key!r} is a {type(record).__name__}")
    return record


def _scalar(record: ConfigRecord, key: str, kind: type, what: str) -> Any:
    if key not in record:
        raise ProtocolError(f"{what} lacks {key!r}")
    value = record[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"{what}: {key!r} = {value!r} is not a {kind.__name__}")
    return value


def encode_request(req: RoundRequest) -> RecordDict:
    records: dict[str, ArrayRecord | ConfigRecord | MetricRecord] = {
        _ROUND: ConfigRecord(
            {"round": req.round, "client_id": req.client_id, "measure": req.measure}
        ),
        _GLOBAL: state_to_record(req.state),
    }
    if req.personal is not None:
        records[_PERSONAL] = state_to_record(req.personal)
    if req.stream is not None:
        records[_STREAM] = ConfigRecord(dataclasses.asdict(req.stream))
    return RecordDict(records)


def decode_request(content: RecordDict) -> RoundRequest:
    what = "round request"
    meta = _get(content, _ROUND, ConfigRecord, what)
    personal = None
    if _PERSONAL in content:
        personal = record_to_state(_get(content, _PERSONAL, ArrayRecord, what), "own state")
    stream = None
    if _STREAM in content:
        rec = _get(content, _STREAM, ConfigRecord, what)
        stream = StreamSettings(
            address=_scalar(rec, "address", str, what),
            secret=_scalar(rec, "secret", str, what),
            window=_scalar(rec, "window", int, what),
            timeout_s=_scalar(rec, "timeout_s", float, what),
            ca_pem=_scalar(rec, "ca_pem", str, what),
        )
    return RoundRequest(
        round=_scalar(meta, "round", int, what),
        client_id=_scalar(meta, "client_id", int, what),
        measure=_scalar(meta, "measure", bool, what),
        state=record_to_state(_get(content, _GLOBAL, ArrayRecord, what), "global state"),
        personal=personal,
        stream=stream,
    )


def kept_state(node_state: RecordDict) -> dict[str, Tensor] | None:
    """The client's own modules as it last received them (its persistent context), if any."""
    if _PERSONAL not in node_state:
        return None
    return record_to_state(_get(node_state, _PERSONAL, ArrayRecord, "context"), "kept state")


def keep_state(node_state: RecordDict, state: dict[str, Tensor]) -> None:
    """Store the client's own modules in its persistent context (survives between rounds)."""
    node_state[_PERSONAL] = state_to_record(state)


def encode_reply(rep: ClientResult) -> RecordDict:
    uploads = ArrayRecord()
    for i, up in enumerate(rep.uploads):
        uploads[f"activations.{i}"] = tensor_to_array(up.activations)
        uploads[f"labels.{i}"] = tensor_to_array(up.labels)
    comm = rep.comm.state_dict()
    meta: dict[str, Any] = {
        "client_id": rep.client_id,
        "num_samples": rep.num_samples,
        "losses": [float(v) for v in rep.losses],
        "uploads": len(rep.uploads),
        "comm_kinds": list(comm),
        "comm_bytes": [int(v) for v in comm.values()],
    }
    if rep.step_cost is not None:
        meta["step_cost"] = [int(v) for v in dataclasses.astuple(rep.step_cost)]
    if rep.round_trips_s:
        meta["round_trips_s"] = [float(v) for v in rep.round_trips_s]
    if rep.peak_rss_bytes:
        meta["peak_rss_bytes"] = int(rep.peak_rss_bytes)
    records: dict[str, ArrayRecord | ConfigRecord | MetricRecord] = {
        _RESULT: ConfigRecord(meta),
        _STATE: state_to_record(rep.state),
        _UPLOADS: uploads,
    }
    if rep.exchange:
        records[_EXCHANGE] = state_to_record(rep.exchange)
    return RecordDict(records)


def decode_reply(content: RecordDict) -> ClientResult:
    what = "round reply"
    meta = _get(content, _RESULT, ConfigRecord, what)
    client_id = _scalar(meta, "client_id", int, what)
    losses = _scalar(meta, "losses", list, what)
    if not all(isinstance(v, float) for v in losses):
        raise ProtocolError(f"{what}: losses must be floats")
    step_cost = None
    if "step_cost" in meta:
        values = _scalar(meta, "step_cost", list, what)
        if len(values) != len(dataclasses.fields(StepCost)):
            raise ProtocolError(f"{what}: step_cost has {len(values)} values")
        step_cost = StepCost(*(int(v) for v in values))
    round_trips = []
    if "round_trips_s" in meta:
        round_trips = _scalar(meta, "round_trips_s", list, what)
        if not all(isinstance(v, float) for v in round_trips):
            raise ProtocolError(f"{what}: round_trips_s must be floats")
    peak_rss = _scalar(meta, "peak_rss_bytes", int, what) if "peak_rss_bytes" in meta else 0
    records = _get(content, _UPLOADS, ArrayRecord, what)
    uploads = []
    for i in range(_scalar(meta, "uploads", int, what)):
        acts, labels = (f"activations.{i}", f"labels.{i}")
        if acts not in records or labels not in records:
            raise ProtocolError(f"{what} lacks upload {i}")
        y = array_to_tensor(records[labels], f"upload {i} labels")
        if y.dtype != torch.int64:
            raise ProtocolError(f"{what}: upload {i} labels are {y.dtype}, not int64")
        uploads.append(Upload(client_id, array_to_tensor(records[acts], f"upload {i}"), y))
    kinds = _scalar(meta, "comm_kinds", list, what)
    nbytes = _scalar(meta, "comm_bytes", list, what)
    if len(kinds) != len(nbytes) or not all(
        isinstance(k, str) and k.split(":")[0] in ("up", "down") for k in kinds
    ):
        raise ProtocolError(f"{what}: malformed byte counts")
    comm = CommCounter()
    comm.load_state_dict(dict(zip(kinds, (int(v) for v in nbytes), strict=True)))
    exchange = {}
    if _EXCHANGE in content:
        record = _get(content, _EXCHANGE, ArrayRecord, what)
        exchange = record_to_state(record, "exchange")
    return ClientResult(
        client_id=client_id,
        num_samples=_scalar(meta, "num_samples", int, what),
        state=record_to_state(_get(content, _STATE, ArrayRecord, what), "client state"),
        exchange=exchange,
        losses=list(losses),
        comm=comm,
        step_cost=step_cost,
        uploads=uploads,
        round_trips_s=list(round_trips),
        peak_rss_bytes=peak_rss,
    )


def encode_hello() -> RecordDict:
    return RecordDict({_HELLO: ConfigRecord({})})


def encode_hello_reply(partition_id: int) -> RecordDict:
    return RecordDict({_HELLO: ConfigRecord({"partition_id": partition_id})})


def decode_hello_reply(content: RecordDict) -> int:
    what = "handshake reply"
    return int(_scalar(_get(content, _HELLO, ConfigRecord, what), "partition_id", int, what))


def message_nbytes(msg: Message) -> int:
    """Bytes of the message as Flower sends it: every object of its tree, serialised once.

    Flower ships a message as content-addressed objects (the message, its records, each array's
    header and data chunks); identical objects go once. HTTP framing is not counted.
    """
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(msg).values())


# ----------------------------------------------------------------------------- configuration


def app_config(cfg: RunConfig, opts: DeployOptions) -> dict[str, Any]:
    """The run config as nested tables: [tool.flwr.app.config] of the Flower app."""
    return {**to_dict(cfg), _DEPLOY: dataclasses.asdict(opts)}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    raise TypeError(f"cannot write {v!r} to the app config")  # internal: fields are scalars


def _toml_tables(prefix: str, table: Mapping[str, Any]) -> list[str]:
    lines = [f"\n[{prefix}]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for k, v in table.items():
        if isinstance(v, dict):
            lines += _toml_tables(f"{prefix}.{k}", v)
    return lines


def app_pyproject(cfg: RunConfig, opts: DeployOptions) -> str:
    """pyproject.toml of a Flower app that runs `cfg` on the installed heronsfl.

    `flwr run APP_DIR CONNECTION` ships it to the SuperLink; every key of `cfg` can be
    overridden there with `--run-config 'train.local_steps=5'`.
    """
    lines = [
        "# Written by `heronsfl deploy`. The components come from the installed heronsfl, so",
        "# the SuperLink and every SuperNode need `pip install heronsfl[flower]` (same version).",
        "[project]",
        'name = "heronsfl-deploy"',
        f'version = "{__version__}"',
        'description = "heronsfl split federated learning on Flower"',
        'license = "Apache-2.0"',
        f'dependencies = ["heronsfl[flower]=={__version__}"]',
        "\n[tool.flwr.app]",
        'publisher = "heronsfl"',
        "\n[tool.flwr.app.components]",
        f'serverapp = "{SERVER_APP}"',
        f'clientapp = "{CLIENT_APP}"',
    ]
    lines += _toml_tables("tool.flwr.app.config", app_config(cfg, opts))
    return "\n".join(lines) + "\n"


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return nested


def _deploy_options(data: Mapping[str, Any]) -> DeployOptions:
    hints = typing.get_type_hints(DeployOptions)
    kwargs: dict[str, Any] = {}
    problems = []
    for key, value in data.items():
        if key not in hints:
            problems.append(f"unknown run config key 'deploy.{key}'; known: {DeployOptions.keys()}")
            continue
        typ = hints[key]
        ok = isinstance(value, typ) and not (typ is not bool and isinstance(value, bool))
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            problems.append(f"deploy.{key} = {value!r} must be a {typ.__name__}")
        kwargs[key] = value
    if problems:
        raise ConfigError(problems)
    return DeployOptions(**kwargs)


def settings_from_run_config(run_config: Mapping[str, Any]) -> tuple[RunConfig, DeployOptions]:
    """Flower's run config (flat, dotted keys) -> the run's config and the server's options.

    The one place that reads `context.run_config`; raises ConfigError for a bad value.
    """
    nested = _unflatten(run_config)
    deploy = nested.pop(_DEPLOY, {})
    return config_from_dict(nested), _deploy_options(deploy)


def node_settings(node_config: Mapping[str, Any]) -> NodeSettings:
    """A SuperNode's node config -> NodeSettings; raises ConfigError naming the fix."""
    unknown = sorted(set(node_config) - set(_NODE_KEYS))
    problems = [f"unknown node config key {k!r}; known: {', '.join(_NODE_KEYS)}" for k in unknown]
    pid = node_config.get(PARTITION_ID)
    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
        problems.append(
            f"node config {PARTITION_ID} = {pid!r}: every SuperNode needs its client id, e.g. "
            f"flower-supernode ... --node-config '{PARTITION_ID}=0 {NUM_PARTITIONS}=5'"
        )
    num = node_config.get(NUM_PARTITIONS)
    if num is not None and (not isinstance(num, int) or isinstance(num, bool) or num < 1):
        problems.append(f"node config {NUM_PARTITIONS} = {num!r} must be a positive integer")
    paths = {k: node_config.get(k, "") for k in (DATA_ROOT, DATA_PATH)}
    problems += [
        f"node config {k} = {v!r} must be a string"
        for k, v in paths.items()
        if not isinstance(v, str)
    ]
    if problems:
        raise ConfigError(problems)
    return NodeSettings(int(pid), num, paths[DATA_ROOT], paths[DATA_PATH])  # type: ignore[arg-type]


def node_config_text(settings: NodeSettings) -> str:
    """The --node-config argument of flower-supernode for `settings`."""
    parts = [f"{PARTITION_ID}={settings.partition_id}"]
    if settings.num_partitions is not None:
        parts.append(f"{NUM_PARTITIONS}={settings.num_partitions}")
    for key, value in ((DATA_ROOT, settings.data_root), (DATA_PATH, settings.data_path)):
        if value:
            parts.append(f"{key}={json.dumps(value)}")
    return " ".join(parts)
