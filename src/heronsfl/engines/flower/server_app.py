"""The Flower ServerApp: main server and Fed-Server in one process, SuperNodes as clients.

A round is one message exchange per participating client (only the ServerApp can send):
1. The federation core's `begin_round` gives the global client (+ aux) state at wire precision; each
   participant's SuperNode gets it in a `train` message (`codec.encode_request`).
2. Each client runs its h local steps on its own data and replies once with its
   `ClientResult`: its state, its activation uploads and its losses (`client_app.client_round`).
3. With every reply in (or `deploy.round_timeout_s` over), the main server takes its FO steps on
   the uploads in the simulator's order (round-robin: step 0 of every client in client order,
   then step 1, ...; or client by client), and the core's `end_round` aggregates and evaluates.
   Clients that did not reply are left out of the round and logged.
Since the clients never hear from the server during a round, this computes exactly what the
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
import time
from collections.abc import Iterable
from itertools import zip_longest
from typing import Any

import torch
from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp
from torch import Tensor

from heronsfl.algorithms import get_algorithm
from heronsfl.config import RunConfig
from heronsfl.engines.flower import codec
from heronsfl.engines.flower.client_app import check_supported
from heronsfl.engines.flower.protocol import DeployError, DeployOptions, RoundRequest
from heronsfl.federation import Federation
from heronsfl.messages import ClientResult
from heronsfl.metrics.log import RunWriter
from heronsfl.runner import run_rounds

log = logging.getLogger(__name__)

app = ServerApp()

_POLL_S = 1.0  # how often the server looks for SuperNodes while it waits for them


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
        self._waited_for_all = False

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        """All rounds (or those left after the checkpoint in `deploy.out`); returns the summary."""
        writer = RunWriter(self.opts.out, self.cfg, overwrite=self.opts.overwrite)
        try:
            return run_rounds(
                self.core,
                self.run_round,
                writer,
                on_round=lambda r: log.info(_fmt(r)),
                on_resume=self._resume,
            )
        finally:
            writer.close()

    def _resume(self, last: dict[str, Any]) -> None:
        # (a run begun by `heronsfl run` has no Flower bytes yet)
        self.flower_bytes = {
            "up": last.get("flower/uplink_bytes", 0),
            "down": last.get("flower/downlink_bytes", 0),
        }

    def run_round(self) -> dict[str, Any]:
        core, opts = self.core, self.opts
        clients = self.clients_online()
        wire_state = core.begin_round()
        participants = core.participants()
        measured = participants[0] if core.step_cost is None else None
        own = {cid: self._own_state(cid) for cid in participants if cid in clients}
        requests = {
            cid: Message(
                codec.encode_request(
                    RoundRequest(core.round, cid, cid == measured, wire_state, own[cid][0])
                ),
                dst_node_id=clients[cid],
                message_type=codec.TRAIN,
                group_id=str(core.round),
            )
            for cid in own
        }
        self.flower_bytes["down"] += sum(codec.message_nbytes(m) for m in requests.values())
        t = time.perf_counter()
        replies = self.grid.send_and_receive(list(requests.values()), timeout=opts.round_timeout_s)
        exchange_s = time.perf_counter() - t
        arrived = self._accept(replies, {clients[c]: c for c in requests})
        dropped = [c for c in participants if c not in arrived]
        if absent := [c for c in participants if c not in clients]:
            log.warning("round %d: client(s) %s not connected", core.round, absent)
        if silent := [c for c in dropped if c in clients]:
            log.warning(
                "round %d: no reply from client(s) %s within %.0f s; going on with %d of %d",
                core.round,
                silent,
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
        order = [c for c in participants if c in arrived]
        self._replay([arrived[c] for c in order])
        record = core.end_round([arrived[c] for c in order])
        record["flower/uplink_bytes"] = self.flower_bytes["up"]
        record["flower/downlink_bytes"] = self.flower_bytes["down"]
        record["deploy/clients"] = order
        record["deploy/dropped_clients"] = dropped
        record["deploy/exchange_s"] = exchange_s
        return record

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

    def _replay(self, replies: list[ClientResult]) -> None:
        """The main server's steps on the uploads, in the simulator's order."""
        if self.cfg.train.server_order == "client-by-client":
            for reply in replies:
                for up in reply.uploads:
                    self.core.consume(up)
        else:  # round-robin: every client's j-th upload, in client order, then the (j+1)-th
            for step in zip_longest(*(r.uploads for r in replies)):
                for up in step:
                    if up is not None:
                        self.core.consume(up)
        for reply in replies:
            reply.uploads = []  # the activations are consumed: free them before evaluation

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


def _fmt(record: dict[str, Any]) -> str:
    parts = [f"round {record['round']}"]
    if "test/accuracy" in record:
        parts.append(f"acc {record['test/accuracy']:.4f}")
    parts.append(f"clients {record['deploy/clients']}")
    if record["deploy/dropped_clients"]:
        parts.append(f"dropped {record['deploy/dropped_clients']}")
    parts.append(f"{record['round_s']:.1f} s")
    return " | ".join(parts)
