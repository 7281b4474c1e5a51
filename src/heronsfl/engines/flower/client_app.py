"""The Flower ClientApp: one SuperNode = one client, on its own data only.

Per round the SuperNode receives one `train` message (the global client + aux state, the
round's indices and where the main server's per-step stream is), opens its stream, runs the
client's h local steps with the same `ClientRun` the simulator uses, sending each step's upload
as it is produced (or waiting for the server's answer to a synchronous step), closes the stream
and replies once with its state and its losses. A `query` message is the handshake in which the
server learns which client (partition) a SuperNode holds.

Data: a SuperNode loads the training split (from data.root, or its own `data-root`), keeps only
its partition and drops the rest before training; with `data-path` it loads an .npz that holds
its samples only (`heronsfl deploy partition` writes one per client). Nothing of another
client's data is kept.

State across rounds: a client builds its optimizer afresh every round, as in the simulator.
What it must keep is its own (not averaged) modules, e.g. FSL-SAGE's aux head: the server sends
a new copy only when it has re-aligned it, and the client keeps the last copy it received in the
SuperNode's persistent `Context.state`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from torch import Tensor, nn

from heronsfl.aggregation import to_wire
from heronsfl.algorithms import get_algorithm
from heronsfl.algorithms.base import SplitAlgorithm
from heronsfl.algorithms.ho_sfl import HOSFL
from heronsfl.config import RunConfig
from heronsfl.data.datasets import ArrayDataset
from heronsfl.engines.client import ClientRun
from heronsfl.engines.flower import codec
from heronsfl.engines.flower.protocol import NodeSettings, RoundRequest
from heronsfl.engines.simulation import client_partitions, resolve_device
from heronsfl.engines.stream import wire
from heronsfl.engines.stream.client import StreamClient
from heronsfl.engines.stream.link import Certificates
from heronsfl.errors import ConfigError, DataError
from heronsfl.messages import ClientResult, Download, Upload
from heronsfl.metrics.comm import CommCounter
from heronsfl.metrics.memory import process_peak_rss_bytes
from heronsfl.state import load_prefixed, travelling_state
from heronsfl.tasks import build_split_model, get_task, load_datasets

log = logging.getLogger(__name__)

app = ClientApp()


@app.query()
def hello(msg: Message, context: Context) -> Message:
    """The handshake: tell the server which client this SuperNode is."""
    node = codec.node_settings(context.node_config)
    return Message(codec.encode_hello_reply(node.partition_id), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of this client: global state in, state + uploads + losses out."""
    cfg, _ = codec.settings_from_run_config(context.run_config)
    node = codec.node_settings(context.node_config)
    req = codec.decode_request(msg.content)
    if req.personal is not None:  # a newer copy of this client's own modules: keep it
        codec.keep_state(context.state, req.personal)
    reply = client_round(cfg, node, req, codec.kept_state(context.state))
    # The ClientApp process lives for this message only, so its peak is this round's.
    reply = replace(reply, peak_rss_bytes=process_peak_rss_bytes())
    return Message(codec.encode_reply(reply), reply_to=msg)


def check_supported(algo: type[SplitAlgorithm] | SplitAlgorithm) -> None:
    """Every registered algorithm deploys; one that shares a client model must be HO-SFL's
    kind (its per-step synchronisation is `HOSFL.mean_scalars` / `apply_scalars`)."""
    if isinstance(algo, SplitAlgorithm):
        algo = type(algo)
    if algo.shared_client_model and not issubclass(algo, HOSFL):
        raise ConfigError(
            f"algorithm {algo.name!r} shares one client model across clients in a way "
            "`heronsfl deploy` does not know how to synchronise; run it with `heronsfl run`"
        )


def client_modules(
    cfg: RunConfig, algo: SplitAlgorithm
) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """A client's modules, freshly initialised from the run seed: those the Fed-Server averages
    and those the client keeps for itself (split as the simulator splits them)."""
    model = build_split_model(cfg, with_aux=algo.uses_aux_head, whole=algo.trains_whole_model)
    return algo.client_modules(model)


def load_client_data(cfg: RunConfig, node: NodeSettings) -> ArrayDataset:
    """This client's own training samples, in the order the simulator's partition lists them."""
    task = get_task(cfg.task)
    if node.data_path:
        path = Path(node.data_path)
        if not path.is_file():
            raise DataError(f"node config data-path {str(path)!r} does not exist on this node")
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz or "y" not in npz:
                raise DataError(f"{path} must hold arrays 'x' and 'y' (heronsfl deploy partition)")
            x, y = torch.from_numpy(npz["x"]), torch.from_numpy(npz["y"])
        return ArrayDataset(x, y, classes=tuple(str(i) for i in range(task.num_classes)))
    if node.data_root:
        cfg = replace(cfg, data=replace(cfg.data, root=node.data_root))
    train_set = load_datasets(cfg, "train")
    idx = torch.as_tensor(client_partitions(cfg, train_set)[node.partition_id], dtype=torch.long)
    # Keep this partition only; batches index it by position, so the order must be kept. The
    # dataset keeps its type (images, or a language model's token ids).
    return dataclasses.replace(train_set, x=train_set.x[idx], y=train_set.y[idx])


def client_round(
    cfg: RunConfig,
    node: NodeSettings,
    req: RoundRequest,
    kept: dict[str, Tensor] | None = None,
) -> ClientResult:
    """Run client `req.client_id`'s round on this node's data.

    `kept` is the state of the client's own modules as it last received it (None: they start
    from their initialisation, as in the simulator).
    """
    if node.num_partitions is not None and node.num_partitions != cfg.clients:
        raise ConfigError(
            f"this SuperNode has num-partitions={node.num_partitions} but the run has "
            f"clients={cfg.clients}; start it with --node-config "
            f"'{codec.PARTITION_ID}={node.partition_id} {codec.NUM_PARTITIONS}={cfg.clients}'"
        )
    if req.client_id != node.partition_id:
        raise codec.ProtocolError(
            f"request for client {req.client_id} reached the SuperNode of client "
            f"{node.partition_id}"
        )
    algo = get_algorithm(cfg.algorithm)(cfg)
    check_supported(algo)
    data = load_client_data(cfg, node)
    averaged, own = client_modules(cfg, algo)
    if own and kept is not None:
        load_prefixed(own, kept)
    stream = req.stream
    if stream is None:
        raise codec.ProtocolError(
            "the round request names no per-step stream: run the same heronsfl version on the "
            "server and the SuperNodes"
        )
    certificates = Certificates(ca=stream.ca_pem.encode()) if stream.ca_pem else None
    with StreamClient(
        stream.address,
        stream.secret,
        req.client_id,
        req.round,
        window=stream.window,
        certificates=certificates,
        timeout_s=stream.timeout_s,
        connect_timeout_s=stream.timeout_s,
    ) as link:
        result = _stream_round(algo, link, cfg, data, req, {**averaged, **own}, set(averaged))
    log.info("client %d: round %d done", req.client_id, req.round)
    return result


def _stream_round(
    algo: SplitAlgorithm,
    link: StreamClient,
    cfg: RunConfig,
    data: ArrayDataset,
    req: RoundRequest,
    modules: dict[str, nn.Module],
    sends: set[str],
) -> ClientResult:
    """The client's h local steps, each step's traffic on the stream as it is produced: a
    decoupled client sends its uploads and never waits (beyond the window); a synchronous
    client waits for the server's answer to each upload."""
    device = resolve_device(cfg.device)
    round_trips: list[float] = []
    step = itertools.count()

    def ask(up: Upload) -> Download:
        t = time.perf_counter()
        down, _ = link.exchange(up, next(step))
        round_trips.append(time.perf_counter() - t)
        if not isinstance(down, Download) or down.client_id != req.client_id:
            raise codec.ProtocolError(f"client {req.client_id}: the server answered {down!r:.80}")
        return down

    run = ClientRun(
        algo,
        get_task(cfg.task),
        data,
        np.arange(len(data)),
        req.round,
        req.client_id,
        {k: m.to(device) for k, m in modules.items()},
        req.state,
        device,
        server=ask if algo.sends_gradients else None,
        measure=req.measure,
        sends=set() if algo.shared_client_model else sends,
    )
    if algo.shared_client_model:  # a copy of the one client model: loaded here, kept in sync
        load_prefixed({k: m for k, m in modules.items() if k in sends}, req.state)
    for i, up in enumerate(run):
        if up is not None and not algo.sends_gradients:
            link.send(up, i)
        if algo.shared_client_model:
            assert run.client is not None, "the client is mid-round"
            _synchronize(algo, run, link, i, round_trips)
    result = run.finished()
    if algo.shared_client_model:
        result = dataclasses.replace(result, state=_buffers(algo, modules, result.comm))
    return dataclasses.replace(result, round_trips_s=round_trips)


def _synchronize(
    algo: SplitAlgorithm, run: ClientRun, link: StreamClient, step: int, trips: list[float]
) -> None:
    """HO-SFL's cross-client step on the stream: this client's P scalars up, the server's mean
    over the clients down, the same update applied to this client's copy as to every other."""
    c = run.client
    assert c is not None and isinstance(algo, HOSFL), "a shared-model client mid-round"
    values = torch.tensor(c.zo_record[-1][1])
    t = time.perf_counter()
    mean, _ = link.exchange(wire.Scalars(c.client_id, step, values), step)
    trips.append(time.perf_counter() - t)
    if not isinstance(mean, wire.Scalars) or mean.values.shape != values.shape:
        raise codec.ProtocolError(f"client {c.client_id}: the server answered {mean!r:.80}")
    algo.apply_scalars(c, mean.values)
    run.comm.add("up", "zo_scalars", [values])
    run.comm.add("down", "zo_scalars", [mean.values])


def _buffers(
    algo: SplitAlgorithm, modules: dict[str, nn.Module], comm: CommCounter
) -> dict[str, Tensor]:
    """A shared-model client's BatchNorm buffers (its own: each client runs its own forwards),
    at wire precision: what it sends back besides its scalars."""
    state = travelling_state({"client": modules["client"]})
    params = {f"client.{n}" for n, _ in modules["client"].named_parameters()}
    buffers = to_wire({k: v for k, v in state.items() if k not in params}, algo.wire_dtype)
    comm.add("up", "model", buffers.values())
    return buffers
