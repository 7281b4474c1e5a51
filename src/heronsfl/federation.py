"""The federation core: main server + Fed-Server, the same object under every engine.

An engine drives it round by round; the core does the learning-side bookkeeping and leaves
transport and client scheduling to the engine:
1. `begin_round`: the Fed-Server's global client (+ aux) state, cast to wire precision, and
   the main server's side of the round (`server_for(client)`: SFLV1 hands out copies).
2. The engine runs the participants' rounds (in-process: engines/simulation.py; over Flower:
   engines/flower/server_app.py) and feeds the main server their uploads (`consume`).
3. `end_round`: the algorithm aggregates the round's `ClientResult`s, the server does its
   after-round work (FSL-SAGE's alignment), the core evaluates and returns the round's record.
`state_dict`/`load_state_dict` checkpoint everything needed to continue after a round.
What is learned and how it is aggregated is the algorithm's (algorithms/base.py hooks); the
round loop around this (metrics, budget, checkpoints, resume) is runner.run_rounds.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from heronsfl.aggregation import to_wire
from heronsfl.algorithms import get_algorithm
from heronsfl.algorithms.base import (
    IGNORE_INDEX,
    FedRound,
    ServerRound,
    ServerState,
    SplitAlgorithm,
    task_loss,
)
from heronsfl.config import RunConfig
from heronsfl.errors import ConfigError
from heronsfl.messages import ClientResult, StepCost, Upload
from heronsfl.metrics.comm import CommCounter
from heronsfl.progress import RoundProgress
from heronsfl.rng import numpy_rng
from heronsfl.state import load_prefixed, prefixed_state, travelling_state
from heronsfl.tasks import build_split_model, get_task, load_datasets


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = 'cuda' but no CUDA device is visible; use device=cpu or auto")
    return torch.device(name)


@dataclass
class EvalResult:
    accuracy: float
    loss: float
    aux_accuracy: float | None


class Federation:
    """Main server and Fed-Server of `cfg`: the global state, the server model, the counters."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.task = get_task(cfg.task)
        self.algo: SplitAlgorithm = get_algorithm(cfg.algorithm)(cfg)
        self.model = build_split_model(
            cfg, with_aux=self.algo.uses_aux_head, whole=self.algo.trains_whole_model
        ).to(self.device)
        self.test_set = load_datasets(cfg, "test")
        self.server = self.algo.new_server_state(self.model.server)
        # The Fed-Server's global state: an fp32 master copy; the template modules only borrow it.
        self.global_state = {
            k: v.detach().clone() for k, v in prefixed_state(self.averaged()).items()
        }
        self.comm = CommCounter()
        self.step_cost: StepCost | None = None
        self.round = 0
        self._t0 = 0.0
        self._wire_state: dict[str, Tensor] = {}
        self._server_round: ServerRound = self.algo.begin_server_round(self.server)
        self._server_losses_before = 0
        self.progress = RoundProgress()  # within-round counts; the CLI swaps in a display

    def averaged(self) -> dict[str, nn.Module]:
        """The template modules whose state the Fed-Server averages (prefix -> module)."""
        return self.algo.client_modules(self.model)[0]

    def personal(self) -> dict[str, nn.Module]:
        """Template modules each client keeps for itself (FSL-SAGE's aux heads)."""
        return self.algo.client_modules(self.model)[1]

    # ------------------------------------------------------------------ one round
    def begin_round(self) -> dict[str, Tensor]:
        """Start the next round; returns the global state as broadcast (wire precision)."""
        self.round += 1
        self._t0 = time.perf_counter()
        self._server_losses_before = len(self.server.losses)
        self.model.server.train()
        travel = travelling_state(self.averaged()).keys()
        self._wire_state = to_wire(
            {k: v for k, v in self.global_state.items() if k in travel}, self.algo.wire_dtype
        )
        self._server_round = self.algo.begin_server_round(self.server)
        return self._wire_state

    def participants(self) -> list[int]:
        """This round's clients: all, or a seeded sample (train.clients_per_round or
        train.client_fraction), the same in every engine."""
        t, n = self.cfg.train, self.cfg.clients
        count = t.clients_per_round or max(1, round(t.client_fraction * n))
        if count >= n:
            return list(range(n))
        rng = numpy_rng(self.cfg.seed, "participation", self.round)
        return sorted(rng.choice(n, size=count, replace=False).tolist())

    def personal_state(self, client_id: int) -> dict[str, Tensor] | None:
        """Client `client_id`'s own modules as the server last re-fitted them, at wire
        precision (None: their initialisation still holds)."""
        state = self.algo.personal_state(self.server, client_id)
        return None if state is None else to_wire(state, self.algo.wire_dtype)

    def server_for(self, client_id: int) -> ServerState:
        """The server state that answers client `client_id` this round (synchronous SFL)."""
        return self._server_round.for_client(client_id)

    def client_done(self, server: ServerState, result: ClientResult) -> None:
        """A synchronous client ended its round with `server` (from `server_for`)."""
        self._server_round.client_done(server, result)

    def consume(self, up: Upload) -> None:
        """The main server's step on one upload (decoupled algorithms)."""
        self.algo.server_step(self.server, up)
        self.progress.server_step()

    def end_round(self, results: Sequence[ClientResult]) -> dict[str, Any]:
        """Fed-Server aggregation of the round's results, evaluation, the round's record."""
        cfg = self.cfg
        self._server_round.end()
        client_losses: list[float] = []
        for result in results:
            client_losses += result.losses
            for key, nbytes in result.comm.bytes.items():
                self.comm.bytes[key] += nbytes
            if result.step_cost is not None:
                self.step_cost = result.step_cost
        fed = FedRound(self.round, self.global_state, self._wire_state, self.averaged())
        self.global_state = self.algo.aggregate(fed, results)

        # Server work after the round (FSL-SAGE's alignment) and what it sends each client.
        for state in self.algo.end_of_round(self.server, self.round, self.personal()).values():
            self.comm.add("down", "aux", to_wire(state, self.algo.wire_dtype).values())

        server_losses = self.server.losses[self._server_losses_before :]
        record: dict[str, Any] = {"round": self.round}
        if self.round % cfg.train.eval_every == 0 or self.round == cfg.rounds:
            ev = self.evaluate()
            record["test/accuracy"] = ev.accuracy
            record["test/loss"] = ev.loss
            if self.task.reports_perplexity:
                record["test/perplexity"] = math.exp(min(ev.loss, 50.0))
            if ev.aux_accuracy is not None:
                record["aux/accuracy"] = ev.aux_accuracy
        if client_losses:
            record["train/client_loss"] = sum(client_losses) / len(client_losses)
        if server_losses:
            record["train/server_loss"] = sum(server_losses) / len(server_losses)
        record.update(self.comm.as_metrics())
        if self.step_cost is not None:
            record["client/peak_mem_bytes"] = self.step_cost.peak_mem_bytes
            record["client/macs_per_step"] = self.step_cost.flops / 2
            record["client/flops_per_step"] = self.step_cost.flops
        record["round_s"] = time.perf_counter() - self._t0
        return record

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after the current round: tensors and plain values."""
        sc = self.step_cost
        return {
            "round": self.round,
            "global_state": self.global_state,
            "server_model": self.model.server.state_dict(),
            "server_optimizer": None
            if self.server.optimizer is None
            else self.server.optimizer.state_dict(),
            "comm": self.comm.state_dict(),
            "server_extra": self.server.extra,
            "step_cost": None if sc is None else dataclasses.asdict(sc),
        }

    def client_snapshot(self) -> dict[str, Tensor]:
        """The global client sub-model's state (no aux head): what an attacker would hold."""
        return {k: v for k, v in self.global_state.items() if k.startswith("client.")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round = int(state["round"])
        self.global_state = {k: v.to(self.device) for k, v in state["global_state"].items()}
        self.model.server.load_state_dict(state["server_model"])
        if self.server.optimizer is not None and state["server_optimizer"] is not None:
            self.server.optimizer.load_state_dict(state["server_optimizer"])
        self.comm.load_state_dict(state["comm"])
        self.server.extra = state["server_extra"]

        sc = state["step_cost"]
        self.step_cost = None if sc is None else StepCost(**sc)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> EvalResult:
        """Global client -> server (test/accuracy) and global client -> aux (aux/accuracy)."""
        load_prefixed(self.averaged(), self.global_state)
        # aux/accuracy: the averaged aux head; per-client heads (FSL-SAGE) are not evaluated.
        has_aux = "aux" in self.averaged()

        for m in (self.model.client, self.model.server, self.model.aux):
            if m is not None:
                m.eval()
        correct = aux_correct = counted = 0
        loss_sum = 0.0
        bs = self.cfg.train.eval_batch_size
        for start in range(0, len(self.test_set), bs):
            x = self.task.preprocess(self.test_set.x[start : start + bs], False, False, None)
            y = self.test_set.y[start : start + bs].to(self.device)
            acts = self.model.client(x.to(self.device))  # (B, *cut_shape)
            logits = self.model.server(acts)  # (B, K) or (B, T, V)
            valid = y != IGNORE_INDEX  # every sample of a classifier, the target tokens of an LM
            counted += int(valid.sum())  # host syncs: once per eval batch
            loss_sum += float(task_loss(logits, y, reduction="sum"))
            correct += int(((logits.argmax(-1) == y) & valid).sum())
            if has_aux:
                assert self.model.aux is not None, "has_aux implies an aux head"
                aux_correct += int(((self.model.aux(acts).argmax(-1) == y) & valid).sum())
        n = max(counted, 1)
        return EvalResult(correct / n, loss_sum / n, aux_correct / n if has_aux else None)
