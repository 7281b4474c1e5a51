"""An in-process Flower Grid for fast tests: each node runs the ClientApp with its own Context.

Messages cross a simulated network: the sender's message is deflated into Flower's objects and
the receiver inflates it from those bytes, as a SuperLink would relay it. No Flower processes;
each node handles its message in its own thread, as SuperNodes run at the same time (their
per-step streams are real gRPC streams on 127.0.0.1).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity


def transmit(msg: Message) -> Message:
    """The message as the other side sees it: rebuilt from its serialised objects."""
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(msg).items()}
    out = inflate_object_from_contents(msg.object_id, contents)
    assert isinstance(out, Message), "a message inflates to a message"
    out.metadata.__dict__["_message_id"] = out.object_id  # what the SuperLink assigns
    return out


class LocalGrid(Grid):
    """`node_configs[i]` is node i+1's --node-config; `silent` nodes answer the handshake but
    never a round (a client that dies after joining); `offline` nodes are not connected.

    `before_send(message_type, nodes)` runs before each exchange (tests inject failures there).
    """

    def __init__(
        self,
        client_app: ClientApp,
        run_config: dict[str, Any],
        node_configs: list[dict[str, Any]],
        before_send: Callable[[str, list[int]], None] | None = None,
    ) -> None:
        # Messages take their sender from the process's task identity (the ServerApp's, here).
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
        self.app = client_app
        self.contexts = {
            i + 1: Context(1, i + 1, dict(nc), RecordDict(), dict(run_config))
            for i, nc in enumerate(node_configs)
        }
        self.silent: set[int] = set()
        self.offline: set[int] = set()
        self.before_send = before_send
        self.exchanges: list[tuple[str, list[int]]] = []
        self._run = Run.create_empty(1)
        self._replies: dict[str, Message] = {}
        self._lock = threading.Lock()

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(
            content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id
        )

    def get_node_ids(self) -> list[int]:
        return [n for n in self.contexts if n not in self.offline]

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        messages = list(messages)
        nodes = [m.metadata.dst_node_id for m in messages]
        kind = messages[0].metadata.message_type if messages else ""
        self.exchanges.append((kind, nodes))
        if self.before_send is not None:
            self.before_send(kind, nodes)
        ids = []
        for msg in messages:
            received = transmit(msg)
            node = msg.metadata.dst_node_id
            ids.append(received.metadata.message_id)
            if node in self.offline or (node in self.silent and kind == "train"):
                continue
            threading.Thread(target=self._handle, args=(received, node), daemon=True).start()
        return ids

    def _handle(self, received: Message, node: int) -> None:
        try:
            reply = self.app(received, self.contexts[node])
        except Exception as e:  # the SuperNode turns a ClientApp exception into an error reply
            reply = Message(Error(code=0, reason=f"{type(e).__name__}: {e}"), reply_to=received)
        with self._lock:
            self._replies[received.metadata.message_id] = transmit(reply)

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        with self._lock:
            return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        waiting = set(self.push_messages(messages))
        deadline = time.monotonic() + (timeout if timeout is not None else 60.0)
        replies: list[Message] = []
        while waiting and time.monotonic() < deadline:
            got = self.pull_messages(waiting)
            replies += got
            waiting -= {m.metadata.reply_to_message_id for m in got}
            time.sleep(0.01)
        return replies
