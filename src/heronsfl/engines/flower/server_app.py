"""The Flower ServerApp: main server and Fed-Server in one process, SuperNodes as clients.

A round has two planes (only the ServerApp can send on Flower; each client opens its stream):
1. The federation core's `begin_round` gives the global client (+ aux) state at wire precision;
   each participant's SuperNode gets it in a `train` message (`codec.encode_request`), with the
   address and secret of the main server's per-step stream (engines/stream/).
2. Each client runs its h local steps on its own data (`client_app.client_round`), sending each
   step's upload on its stream as it is produced; the main server takes its FO steps on them as
   they arrive, in the simulator's order (round-robin or client by client), or answers each
   step at once (synchronous algorithms, in their turn order; HO-SFL's λ and mean scalars).
   The round's Flower exchange runs meanwhile in a background thread; each client replies once,
   at the end of its round, with its `ClientResult` (its state and losses; no uploads).
3. The core's `end_round` aggregates and evaluates. Clients that dropped (stream broken or
   silent past `deploy.stream_timeout_s`, an error reply, no reply within
   `deploy.round_timeout_s`) are left out of the round and logged.
The server consumes exactly the simulator's sequence of uploads, so this computes what the
in-process simulator computes for the same seed.

The rounds run in the round loop of `heronsfl run` (runner.run_rounds), so the server writes the
run directory `deploy.out` as `heronsfl run` does (metrics.jsonl, an atomic checkpoint.pt,
summary.json with the task's final metrics at the end): a restarted ServerApp with the same
config resumes after the last completed round.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp
from torch import Tensor

from heronsfl.algorithms import get_algorithm
from heronsfl.algorithms.base import ClientState, ServerState
from heronsfl.algorithms.ho_sfl import HOSFL
from heronsfl.config import RunConfig
from heronsfl.engines.flower import codec
from heronsfl.engines.flower.client_app import check_supported
from heronsfl.engines.flower.protocol import (
    DeployError,
    DeployOptions,
    RoundRequest,
    StreamSettings,
)
from heronsfl.engines.stream import wire
from heronsfl.engines.stream.link import Certificates, new_secret
from heronsfl.engines.stream.server import ClientDropped, StreamServer
from heronsfl.federation import Federation
from heronsfl.messages import ClientResult, Download, Upload
from heronsfl.metrics.log import RunWriter
from heronsfl.metrics.memory import process_peak_rss_bytes
from heronsfl.runner import run_rounds
from heronsfl.state import load_prefixed

log = logging.getLogger(__name__)

app = ServerApp()

_POLL_S = 1.0  # how often the server looks for SuperNodes while it waits for them
_PULL_S = 0.5  # how often the server pulls a round's replies from the SuperLink


@app.main()
def main(grid: Grid, context: Context) -> None:
    _log_to_stderr()
    cfg, opts = codec.settings_from_run_config(context.run_config)
    FlowerServer(grid, cfg, opts).run()


def _log_to_stderr() -> None:
    """Show heronsfl's INFO lines in the ServerApp's log stream (`flwr run --stream`)."""
    root = logging.getLogger("heronsfl")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("heronsfl: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


class FlowerServer:
    """Runs `cfg` over a Flower Grid; `run()` writes the run directory `opts.out`."""

    def __init__(self, grid: Grid, cfg: RunConfig, opts: DeployOptions) -> None:
        check_supported(get_algorithm(cfg.algorithm))
        self.grid, self.cfg, self.opts = grid, cfg, opts
        self.core = Federation(cfg)  # the test set only: clients hold the training data
        self.nodes: dict[int, int] = {}  # node id -> client id, in handshake order
        self.delivered: dict[int, str] = {}  # client id -> digest of the own state it holds
        # Serialised Flower message bytes, cumulative (next to the algorithm's own counter).
        self.flower_bytes = {"up": 0, "down": 0}
        # Stream frame bytes from before a resume (the stream server counts this process's).
        self.stream_bytes = {"up": 0, "down": 0}
        self.stream: StreamServer | None = None  # open while run() runs
        self.settings: StreamSettings | None = None  # what each round request says of it
        self._waited_for_all = False
        self.server_steps_s: list[float] = []  # this round's synchronous server steps

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        """All rounds (or those left after the checkpoint in `deploy.out`); returns the summary."""
        writer = RunWriter(self.opts.out, self.cfg, overwrite=self.opts.overwrite)
        try:
            with self._open_stream():
                return run_rounds(
                    self.core,
                    self.run_round,
                    writer,
                    on_round=lambda r: log.info(_fmt(r)),
                    on_resume=self._resume,
                )
        finally:
            writer.close()

    @contextmanager
    def _open_stream(self) -> Iterator[StreamServer]:
        """The per-step stream for the whole run, with a fresh secret; its address, the secret
        and (with TLS) the root CA reach each client in its round request."""
        opts = self.opts
        certificates = None
        if opts.stream_cert:
            certificates = Certificates(
                Path(opts.stream_ca), Path(opts.stream_cert), Path(opts.stream_key)
            )
        secret = new_secret()
        with StreamServer(
            secret,
            window=opts.window,
            timeout_s=opts.stream_timeout_s,
            address=opts.stream_listen,
            certificates=certificates,
            max_clients=max(self.cfg.clients, 1),
        ) as stream:
            address = opts.stream_address or f"{stream.host}:{stream.port}"
            ca = Path(opts.stream_ca).read_text() if certificates is not None else ""
            self.settings = StreamSettings(
                address, secret, opts.window, opts.round_timeout_s, ca_pem=ca
            )
            self.stream = stream
            log.info(
                "per-step stream on %s (%s, window %d)",
                address,
                "TLS" if certificates else "plaintext",
                opts.window,
            )
            try:
                yield stream
            finally:
                self.stream = None

    def _resume(self, last: dict[str, Any]) -> None:
        # (a run begun by `heronsfl run` has no Flower bytes yet)
        self.flower_bytes = {
            "up": last.get("flower/uplink_bytes", 0),
            "down": last.get("flower/downlink_bytes", 0),
        }
        assert self.stream is not None, "resume happens inside run()"
        self.stream_bytes = {  # minus what this server's stream has counted so far (nothing)
            "up": last.get("stream/uplink_bytes", 0) - self.stream.bytes_received,
            "down": last.get("stream/downlink_bytes", 0) - self.stream.bytes_sent,
        }

    def run_round(self) -> dict[str, Any]:
        core, opts, stream = self.core, self.opts, self.stream
        assert stream is not None, "run() opens the stream server"
        clients = self.clients_online()
        wire_state = core.begin_round()
        participants = core.participants()
        measured = participants[0] if core.step_cost is None else None
        own = {cid: self._own_state(cid) for cid in participants if cid in clients}
        requests = {
            cid: Message(
                codec.encode_request(
                    RoundRequest(
                        core.round, cid, cid == measured, wire_state, own[cid][0], self.settings
                    )
                ),
                dst_node_id=clients[cid],
                message_type=codec.TRAIN,
                group_id=str(core.round),
            )
            for cid in own
        }
        self.flower_bytes["down"] += sum(codec.message_nbytes(m) for m in requests.values())
        t = time.perf_counter()
        # The Flower exchange runs beside the stream: clients stream their steps while they
        # train, and their replies (models only) arrive at the end of their rounds.
        exchange = _Exchange(self.grid, requests, opts.round_timeout_s, stream, core.round)
        exchange.start()
        self.server_steps_s = []
        try:
            servers = self._serve_stream([c for c in participants if c in requests], wire_state)
        except BaseException:  # e.g. a diverged server step: stop waiting for anyone, then raise
            for cid in requests:
                stream.give_up(core.round, cid, "the server's round failed")
            exchange.join(_PULL_S * 4)
            raise
        replies = exchange.join()
        exchange_s = time.perf_counter() - t
        arrived = self._accept(replies, {clients[c]: c for c in requests})
        on_stream = stream.dropped.get(core.round, {})
        for cid in [c for c in arrived if c in on_stream]:  # replied, but its steps are missing
            log.warning("round %d: client %d left out: %s", core.round, cid, on_stream[cid])
            del arrived[cid]
        stream.end_round(core.round)
        dropped = [c for c in participants if c not in arrived]
        if absent := [c for c in participants if c not in clients]:
            log.warning("round %d: client(s) %s not connected", core.round, absent)
        if silent := [c for c in dropped if c in clients]:
            log.warning(
                "round %d: no reply from client(s) %s (stream timeout %.0f s, round timeout "
                "%.0f s); going on with %d of %d",
                core.round,
                silent,
                opts.stream_timeout_s,
                opts.round_timeout_s,
                len(arrived),
                len(participants),
            )
        if len(arrived) < opts.min_clients:
            raise DeployError(
                f"round {core.round}: {len(arrived)} client(s) replied, fewer than "
                f"deploy.min_clients = {opts.min_clients}; the run stops, and restarting it with "
                f"the same --out resumes after round {core.round - 1}"
            )
        for cid in arrived:  # their own modules reached them (or they had them already)
            self.delivered[cid] = own[cid][1]
        # The simulator's order: a synchronous round's results in turn order, each client done
        # with its server (SFLV1: its copy) in turn; otherwise in client order.
        order = participants
        if core.algo.sends_gradients:
            order = core.algo.turn_order(participants, core.round)
        order = [c for c in order if c in arrived]
        for cid in order:
            if cid in servers:
                core.client_done(servers[cid], arrived[cid])
        record = core.end_round([arrived[c] for c in order])
        record["flower/uplink_bytes"] = self.flower_bytes["up"]
        record["flower/downlink_bytes"] = self.flower_bytes["down"]
        record["stream/uplink_bytes"] = self.stream_bytes["up"] + stream.bytes_received
        record["stream/downlink_bytes"] = self.stream_bytes["down"] + stream.bytes_sent
        record["deploy/clients"] = order
        record["deploy/dropped_clients"] = dropped
        record["deploy/exchange_s"] = exchange_s
        # Process peaks: a ClientApp's over its round (0 where its kernel does not say),
        # the ServerApp's since it started.
        record["deploy/client_peak_rss_mb"] = [arrived[c].peak_rss_bytes / 2**20 for c in order]
        record["deploy/server_peak_rss_mb"] = process_peak_rss_bytes() / 2**20
        # Synchronous steps: send to answer, as the clients measured it. A client's first step
        # also waits for its turn (the clients before it in turn order), so it is left out.
        trips = [t for c in order for t in arrived[c].round_trips_s[1:]]
        if trips:
            ms = np.quantile(np.array(trips) * 1e3, [0.5, 0.99])
            record["deploy/step_round_trip_median_ms"] = float(ms[0])
            record["deploy/step_round_trip_p99_ms"] = float(ms[1])
        if self.server_steps_s:
            record["deploy/server_step_median_ms"] = float(np.median(self.server_steps_s) * 1e3)
        return record

    def _serve_stream(
        self, clients: list[int], wire_state: dict[str, Tensor]
    ) -> dict[int, ServerState]:
        """The main server's side of the round on the stream, in the simulator's order.

        Decoupled algorithms: consume every client's uploads as they arrive (round-robin or
        client by client). Synchronous ones: clients take turns in the algorithm's order, each
        step answered at once on the client's stream; a shared-model one (HO-SFL) steps all
        clients together. Returns the server state each client used (SFLV1: its own copy), for
        `client_done` once its result is in.
        """
        core, stream, r = self.core, self.stream, self.core.round
        assert stream is not None, "run() opens the stream server"
        if core.algo.shared_client_model:
            return self._serve_shared(clients, wire_state)
        if not core.algo.sends_gradients:
            for cid, _, msg in stream.uploads(r, clients, self.cfg.train.server_order):
                if isinstance(msg, Upload):
                    core.consume(msg)
                else:
                    stream.give_up(r, cid, f"sent a {type(msg).__name__} frame, not an upload")
            return {}
        servers: dict[int, ServerState] = {}
        for cid in [c for c in core.algo.turn_order(core.participants(), r) if c in clients]:
            server = servers[cid] = core.server_for(cid)
            while (got := self._receive(cid, Upload, end_ok=True)) is not None:
                up, step = got
                self._reply(cid, self._server_step(server, up), step)
        return servers

    def _server_step(self, server: ServerState, up: Upload) -> Download:
        """A synchronous step's answer, timed: the server's share of the clients' round trip."""
        t = time.perf_counter()
        answer = self.core.algo.server_step(server, up)
        self.server_steps_s.append(time.perf_counter() - t)
        return answer

    def _serve_shared(
        self, clients: list[int], wire_state: dict[str, Tensor]
    ) -> dict[int, ServerState]:
        """HO-SFL: per local step, every client's upload answered (λ) in client order, then
        the mean of their P scalars sent to each; the server applies the same update to its
        replica of the client model (the template modules), which `aggregate` reads."""
        core, r = self.core, self.core.round
        algo = core.algo
        assert isinstance(algo, HOSFL), "check_supported admits HO-SFL's kind only"
        replica = core.averaged()
        load_prefixed(replica, wire_state)  # what every client loaded
        state = ClientState(-1, r, replica["client"], None, None)
        servers = {cid: core.server_for(cid) for cid in clients}
        active = list(clients)
        for step in range(self.cfg.train.local_steps):
            for cid in list(active):
                if (got := self._receive(cid, Upload)) is None:
                    active.remove(cid)
                    continue
                self._reply(cid, self._server_step(servers[cid], got[0]), step)
            scalars: dict[int, Tensor] = {}
            for cid in list(active):
                if (got := self._receive(cid, wire.Scalars)) is None:
                    active.remove(cid)
                    continue
                scalars[cid] = got[0].values
            if not scalars:
                break
            mean = algo.mean_scalars(list(scalars.values()))
            for cid in scalars:
                self._reply(cid, wire.Scalars(cid, step, mean), step)
            state.step = step
            for _ in scalars:  # the simulator's shared model carries every client's probes
                algo.replay_probes(state)
            algo.apply_scalars(state, mean)
        for cid in active:
            self._receive(cid, Upload, end_ok=True)  # its end frame
        return servers

    def _receive(self, cid: int, kind: type, end_ok: bool = False) -> tuple[Any, int] | None:
        """Client `cid`'s next message if it is a `kind`; None when it ended its stream (or,
        unless `end_ok`, dropped it for ending early), was dropped, or sent something else."""
        stream, r = self.stream, self.core.round
        assert stream is not None, "run() opens the stream server"
        try:
            got = stream.receive(r, cid)
        except ClientDropped as e:
            log.warning("round %d: %s", r, e)
            return None
        if got is None:
            if not end_ok:
                stream.give_up(r, cid, "ended its stream before its last local step")
            return None
        if not isinstance(got[0], kind):
            stream.give_up(r, cid, f"sent a {type(got[0]).__name__}, not a {kind.__name__}")
            return None
        return got

    def _reply(self, cid: int, msg: Any, step: int) -> None:
        stream, r = self.stream, self.core.round
        assert stream is not None and msg is not None, "a synchronous server answers every step"
        try:
            stream.reply(r, cid, msg, step)
        except ClientDropped as e:  # the next receive from it says so again, and skips it
            log.warning("round %d: %s", r, e)

    def _own_state(self, cid: int) -> tuple[dict[str, Tensor] | None, str]:
        """What to send of client `cid`'s own modules (None: it holds the newest already), and
        the digest of the newest, to remember once it arrived."""
        wire = self.core.personal_state(cid)  # as the simulator's client loads it
        if wire is None:
            return None, ""
        digest = hashlib.sha256()
        for key in sorted(wire):
            digest.update(key.encode())
            digest.update(wire[key].cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
        newest = digest.hexdigest()
        return (None if self.delivered.get(cid) == newest else wire), newest

    def _accept(
        self, replies: Iterable[Message], client_of: dict[int, int]
    ) -> dict[int, ClientResult]:
        """The valid replies by client id; failures are logged, never raised."""
        arrived: dict[int, ClientResult] = {}
        for msg in replies:
            cid = client_of.get(msg.metadata.src_node_id)
            if cid is None or cid in arrived:
                continue
            if msg.has_error():
                log.warning(
                    "round %d: client %d failed: %s", self.core.round, cid, msg.error.reason
                )
                continue
            try:
                reply = codec.decode_reply(msg.content)
            except codec.ProtocolError as e:
                log.warning("round %d: client %d sent a bad reply: %s", self.core.round, cid, e)
                continue
            if reply.client_id != cid:
                log.warning(
                    "round %d: node of client %d answered as %d",
                    self.core.round,
                    cid,
                    reply.client_id,
                )
                continue
            self.flower_bytes["up"] += codec.message_nbytes(msg)
            arrived[cid] = reply
        return arrived

    # ------------------------------------------------------------------ SuperNodes
    def clients_online(self) -> dict[int, int]:
        """Client id -> node id of the connected SuperNodes.

        Before its first round the server waits (up to deploy.connect_timeout_s) for all
        `clients`; later it takes whoever is connected, as long as that is deploy.min_clients.
        """
        want = self.cfg.clients if not self._waited_for_all else self.opts.min_clients
        self._waited_for_all = True
        deadline = time.monotonic() + self.opts.connect_timeout_s
        while True:
            online = set(self.grid.get_node_ids())
            for node in [n for n in self.nodes if n not in online]:
                log.warning("client %d (node %d) disconnected", self.nodes.pop(node), node)
            if new := online - set(self.nodes):
                self._handshake(sorted(new))
            clients = {cid: node for node, cid in self.nodes.items()}  # last handshake wins
            if len(clients) >= want:
                return clients
            if time.monotonic() >= deadline:
                if len(clients) >= self.opts.min_clients:
                    log.warning(
                        "%d of %d clients connected after %.0f s; starting with clients %s",
                        len(clients),
                        self.cfg.clients,
                        self.opts.connect_timeout_s,
                        sorted(clients),
                    )
                    return clients
                raise DeployError(
                    f"only {len(clients)} SuperNode(s) answered within "
                    f"deploy.connect_timeout_s = {self.opts.connect_timeout_s} s, fewer than "
                    f"deploy.min_clients = {self.opts.min_clients}: start one flower-supernode "
                    "per client, each with --node-config 'partition-id=<i>'"
                )
            time.sleep(_POLL_S)

    def _handshake(self, nodes: list[int]) -> None:
        """Ask new SuperNodes which client they hold."""
        messages = [
            Message(codec.encode_hello(), dst_node_id=n, message_type=codec.HELLO) for n in nodes
        ]
        self.flower_bytes["down"] += sum(codec.message_nbytes(m) for m in messages)
        timeout = min(self.opts.round_timeout_s, self.opts.connect_timeout_s)
        t = time.perf_counter()
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        # The smallest exchange there is: what one message round trip costs on this Flower.
        log.info("handshake with %d SuperNode(s): %.1f s", len(nodes), time.perf_counter() - t)
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                log.warning("node %d failed the handshake: %s", node, msg.error.reason)
                continue
            try:
                cid = codec.decode_hello_reply(msg.content)
            except codec.ProtocolError as e:
                log.warning("node %d sent a bad handshake: %s", node, e)
                continue
            self.flower_bytes["up"] += codec.message_nbytes(msg)
            if not 0 <= cid < self.cfg.clients:
                log.warning(
                    "node %d holds partition-id=%d, outside 0..%d; ignored",
                    node,
                    cid,
                    self.cfg.clients - 1,
                )
                continue
            if cid in self.nodes.values():
                log.warning("node %d is client %d too; the newest node serves it", node, cid)
            self.nodes[node] = cid
            self.delivered.pop(cid, None)  # a new node holds nothing of this client yet


class _Exchange(threading.Thread):
    """The round's Flower message exchange, in the background while the stream is served.

    A client whose ClientApp failed (an error reply), or that has not replied when the round
    timeout is over, cannot stream any more: the stream server stops waiting for it then.
    An exception here (the SuperLink gone) ends the stream's wait for everyone and is raised
    by `join`.
    """

    def __init__(
        self,
        grid: Grid,
        requests: dict[int, Message],
        timeout_s: float,
        stream: StreamServer,
        round_idx: int,
    ) -> None:
        super().__init__(name="flower-exchange", daemon=True)
        self.grid, self.requests, self.timeout_s = grid, requests, timeout_s
        self.stream, self.round = stream, round_idx
        self.replies: list[Message] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        waiting: dict[str, int] = {}
        try:
            ids = self.grid.push_messages(list(self.requests.values()))
            waiting = dict(zip(ids, self.requests, strict=True))
            deadline = time.monotonic() + self.timeout_s
            while waiting and time.monotonic() < deadline:
                for msg in self.grid.pull_messages(list(waiting)):
                    cid = waiting.pop(msg.metadata.reply_to_message_id, None)
                    if cid is None:
                        continue
                    self.replies.append(msg)
                    if msg.has_error():
                        self.stream.give_up(self.round, cid, f"failed: {msg.error.reason}")
                gone = self.stream.dropped.get(self.round, {})  # their replies cannot count
                waiting = {m: c for m, c in waiting.items() if c not in gone}
                if waiting:
                    time.sleep(_PULL_S)
        except BaseException as e:  # noqa: BLE001 - raised again by join()
            self.error = e
        for cid in waiting.values() if self.error is None else self.requests:
            self.stream.give_up(self.round, cid, "no Flower reply within the round timeout")

    def join(self, timeout: float | None = None) -> list[Message]:  # type: ignore[override]
        super().join(timeout)
        if self.error is not None and timeout is None:
            raise self.error
        return self.replies


def _fmt(record: dict[str, Any]) -> str:
    parts = [f"round {record['round']}"]
    if "test/accuracy" in record:
        parts.append(f"acc {record['test/accuracy']:.4f}")
    parts.append(f"clients {record['deploy/clients']}")
    if record["deploy/dropped_clients"]:
        parts.append(f"dropped {record['deploy/dropped_clients']}")
    parts.append(f"{record['round_s']:.1f} s")
    return " | ".join(parts)
