"""Progress within a round: client local steps, clients finished, main-server steps.

A round of the CIFAR-10 presets takes minutes on a CPU. The engine calls four hooks on a
`RoundProgress` (`start`, `client_step`, `server_step`, `client_done`, then `end`) and knows
nothing of how, or whether, they are shown: the base class only counts. The CLI picks a
display: a tqdm bar on a terminal, a plain log line every `every_s` seconds otherwise (CI logs,
`nohup`, a pipe), where a bar's carriage returns would be noise.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("heronsfl")


class RoundProgress:
    """Counts one round's work; shows nothing (the engine's default)."""

    def __init__(self) -> None:
        self.round = 0
        self.clients = 0
        self.total_steps = 0  # client local steps planned this round (all clients)
        self.steps = 0
        self.clients_done = 0
        self.server_steps = 0

    def start(self, round_idx: int, clients: int, local_steps: int) -> None:
        self.round, self.clients, self.total_steps = round_idx, clients, clients * local_steps
        self.steps = self.clients_done = self.server_steps = 0

    def client_step(self) -> None:
        self.steps += 1
        self.update()

    def server_step(self) -> None:
        self.server_steps += 1
        self.update()

    def client_done(self) -> None:
        self.clients_done += 1
        self.update()

    def end(self) -> None:
        """The round's training is over (evaluation follows)."""

    def update(self) -> None:
        """Called after every count; displays override it."""

    def describe(self) -> str:
        return (
            f"round {self.round}: local steps {self.steps}/{self.total_steps}, "
            f"clients {self.clients_done}/{self.clients}, server steps {self.server_steps}"
        )


class LogProgress(RoundProgress):
    """A plain log line at most every `every_s` seconds, for output that is not a terminal."""

    def __init__(self, every_s: float = 30.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._last = time.monotonic()

    def start(self, round_idx: int, clients: int, local_steps: int) -> None:
        super().start(round_idx, clients, local_steps)
        self._last = time.monotonic()

    def update(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            log.info("%s", self.describe())


class TerminalProgress(RoundProgress):
    """A tqdm bar of the round's local steps under the rounds bar; gone when the round ends."""

    def __init__(self) -> None:
        super().__init__()
        self._bar: Any = None

    def start(self, round_idx: int, clients: int, local_steps: int) -> None:
        from tqdm import tqdm

        super().start(round_idx, clients, local_steps)
        self.end()
        self._bar = tqdm(
            total=self.total_steps, desc=f"round {round_idx}", unit="step", leave=False, position=1
        )

    def update(self) -> None:
        if self._bar is None:
            return
        self._bar.n = self.steps
        self._bar.set_postfix_str(
            f"clients {self.clients_done}/{self.clients}, server steps {self.server_steps}",
            refresh=False,
        )
        self._bar.update(0)  # redraws at most every tqdm mininterval

    def end(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
