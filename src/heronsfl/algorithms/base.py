"""SplitAlgorithm: the one interface every algorithm implements, for all three roles.

An algorithm computes on the state it is handed and returns messages; it does no I/O, transport,
device placement or global RNG use, so the in-process simulator and a networked engine run the
same code. How an engine drives it is data on the class:

- sends_gradients: the main server answers every upload with dLoss/d activations and the client
  waits for it (synchronous SFL). Otherwise the client never waits (decoupled / local-loss SFL)
  and the server consumes uploads on its own schedule.
- uses_aux_head: the client trains (and the Fed-Server averages) an auxiliary head after the cut.
- zeroth_order_client: the client never calls backward (HERON-SFL).
- uploads_activations: False for plain federated learning of the whole model (no main server).
- trains_whole_model: the client holds the whole network (FedAvg, MeZO); there is no cut.
- supports_nopeek: the client adds the NoPeek penalty (privacy.nopeek_weight) to its loss.
- requires: capabilities the task must provide (a LoRA model, a whole-model variant).
- server_schedule: "sequential" = one server model consumes every client's uploads;
  "parallel" = one server copy per client, averaged at the end of the round (SFLV1).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heronsfl.config import OptimConfig, RunConfig
from heronsfl.errors import DivergedError
from heronsfl.messages import Batch, Download, Upload
from heronsfl.privacy.defenses import protect_upload

WIRE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
IGNORE_INDEX = -100  # targets that carry no loss (padding, a language model's prompt tokens)


def task_loss(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy at every position that has a target.

    Classification: logits (B, K), targets (B,). Language modelling: logits (B, T, V), targets
    (B, T) already shifted to the next token, IGNORE_INDEX where there is nothing to predict.
    """
    return F.cross_entropy(
        logits.flatten(0, -2), targets.flatten(), ignore_index=IGNORE_INDEX, reduction=reduction
    )


def head_loss(head: nn.Module, activations: Tensor, targets: Tensor) -> Tensor:
    """task_loss(head(activations), targets). A head with its own `loss(activations, targets)`
    computes it (an LM head skips the logits of positions without a target: same value, a
    fraction of the memory and MACs)."""
    own = getattr(head, "loss", None)
    return own(activations, targets) if callable(own) else task_loss(head(activations), targets)


@dataclass
class ClientState:
    """One client's working state during a round (engines reuse one instance across clients)."""

    client_id: int
    round: int
    model: nn.Module
    aux: nn.Module | None
    optimizer: torch.optim.Optimizer | None
    step: int = 0
    pending: Tensor | None = None  # sync SFL: activations whose graph waits for the gradient
    pending_input: Tensor | None = None  # HO-SFL: the batch its probes re-run after λ arrives
    aux_optimizer: torch.optim.Optimizer | None = None  # a ZO client's first-order aux head

    losses: list[float] = field(default_factory=list)
    zo_record: list[tuple[int, list[float]]] = field(default_factory=list)  # (step seed, g_i)

    def trainable(self) -> list[Tensor]:
        """Parameters the client updates, in a fixed order (the order ZO directions follow)."""
        mods = [self.model] if self.aux is None else [self.model, self.aux]
        return [p for m in mods for p in m.parameters() if p.requires_grad]


@dataclass
class ServerState:
    """The main server's model and its one persistent optimizer."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None  # None when the server has nothing to train
    losses: list[float] = field(default_factory=list)
    # Algorithm-specific server state (FSL-SAGE: per-client buffers and aux copies); tensors,
    # numbers and containers only, so it checkpoints like the rest.
    extra: dict[str, Any] = field(default_factory=dict)


def make_optimizer(params: Iterable[Tensor], cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def check_finite(loss: float, where: str, fix: str) -> float:
    """Stop the run on a NaN/inf loss with a message that says what to change."""
    if not math.isfinite(loss):
        raise DivergedError(f"loss is {loss} {where}; {fix}")
    return loss


class SplitAlgorithm(ABC):
    """Client, main-server and Fed-Server behaviour of one split-learning algorithm."""

    name: ClassVar[str]
    summary: ClassVar[str]
    sends_gradients: ClassVar[bool]
    uses_aux_head: ClassVar[bool]
    zeroth_order_client: ClassVar[bool] = False
    uploads_activations: ClassVar[bool] = True
    trains_whole_model: ClassVar[bool] = False
    server_schedule: ClassVar[Literal["sequential", "parallel"]] = "sequential"
    averages_aux: ClassVar[bool] = True  # False: each client keeps its own aux head (FSL-SAGE)
    # True: clients keep one client model in sync by applying the same broadcast update every
    # step (HO-SFL); no parameters are exchanged and the engine calls `synchronize` per step.
    shared_client_model: ClassVar[bool] = False
    supports_nopeek: ClassVar[bool] = False
    # What the task must provide (see Task.provides), e.g. {"lora"} for SplitLoRA: validation
    # refuses an impossible pairing instead of running something that is not the method.
    requires: ClassVar[frozenset[str]] = frozenset()

    def synchronize(self, clients: Sequence[ClientState]) -> Tensor:
        """The cross-client step of a shared-model algorithm; returns what is broadcast."""
        raise NotImplementedError(f"{self.name} does not share one client model")

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.wire_dtype = WIRE_DTYPES[cfg.comm.wire_dtype]

    # ---------------------------------------------------------------- client
    def new_client_optimizer(self, c: ClientState) -> torch.optim.Optimizer | None:
        """A fresh optimizer for a client's round (client optimizer state does not persist)."""
        return make_optimizer(c.trainable(), self.cfg.client_optim)

    def uploads_at(self, step: int) -> bool:
        """Whether local step `step` (0-based) sends activations: every k-th step."""
        if not self.uploads_activations:
            return False
        if self.sends_gradients:
            return True
        return (step + 1) % self.cfg.train.upload_every == 0

    @abstractmethod
    def client_step(self, c: ClientState, batch: Batch) -> Upload | None:
        """One local step on `batch`; returns what the client uploads, if anything."""

    def client_apply(self, c: ClientState, down: Download) -> None:
        """Finish a synchronous step with the server's gradient (sends_gradients only)."""
        raise NotImplementedError(f"{self.name} receives no gradients from the server")

    def _upload(self, c: ClientState, activations: Tensor, labels: Tensor) -> Upload:
        # The payload is cast to wire precision here: what is counted is what is sent.
        activations = protect_upload(self.cfg, c, activations)  # privacy defenses; off: as is
        return Upload(c.client_id, activations.detach().to(self.wire_dtype, copy=True), labels)

    def _where(self, c: ClientState) -> str:
        return f"at round {c.round}, client {c.client_id}, local step {c.step} ({self.name})"

    # ---------------------------------------------------------------- main server
    def server_step(self, s: ServerState, up: Upload) -> Download | None:
        """One first-order step of the server model on an upload.

        The server trains on exactly what arrived (wire precision, cast up to fp32). Returns the
        cut-layer gradient only when `sends_gradients`.
        """
        device = next(s.model.parameters()).device
        acts = up.activations.to(device=device, dtype=torch.float32)
        labels = up.labels.to(device)
        if self.sends_gradients:
            acts.requires_grad_(True)
        loss = head_loss(s.model, acts, labels)
        assert s.optimizer is not None, "a server that receives uploads has parameters to train"
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        s.optimizer.step()
        value = check_finite(
            loss.item(),  # host sync: one per server step
            f"on the main server ({self.name}, upload from client {up.client_id})",
            "lower server_optim.lr",
        )
        s.losses.append(value)
        if not self.sends_gradients:
            return None
        assert acts.grad is not None, "server forward must reach the activations"
        return Download(up.client_id, acts.grad.to(self.wire_dtype))

    # ---------------------------------------------------------------- per-client state
    def personal_state(self, s: ServerState, client_id: int) -> dict[str, Tensor] | None:
        """The state of a client's own (not averaged) modules, if the server holds a newer one
        than their initialisation; prefixed like the averaged state ("aux.0.weight")."""
        return None

    def end_of_round(
        self, s: ServerState, round_idx: int, personal: dict[str, nn.Module]
    ) -> dict[int, dict[str, Tensor]]:
        """Server work after the round's uploads; returns per-client states to download.

        `personal` holds template copies of the per-client modules, as a workspace.
        """
        return {}
