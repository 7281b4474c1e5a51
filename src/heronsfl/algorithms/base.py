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
- shared_client_model: all clients hold one client model kept in sync by a per-step broadcast
  (HO-SFL); the engine calls `synchronize` after every local step of every client.

The server side is the algorithm's too, through hooks with a FedAvg-style default: the server
optimizer (`new_server_optimizer`), the main server's round (`begin_server_round`, SFLV1's
parallel copies), what a client sends at the end of its round (`client_payload`, HERON's seeds),
the Fed-Server's aggregation (`aggregate`, `result_state`: HERON's seeds replay, HO-SFL's shared
model) and the per-step cross-client step (`synchronize`). Engines call these and nothing else.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heronsfl.aggregation import WeightedAverage
from heronsfl.config import OptimConfig, RunConfig
from heronsfl.errors import DivergedError
from heronsfl.messages import Batch, ClientResult, Download, Upload
from heronsfl.metrics.comm import CommCounter
from heronsfl.privacy.defenses import protect_upload
from heronsfl.state import prefixed_state, travelling_state

if TYPE_CHECKING:
    from heronsfl.models.split import SplitModel

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


@dataclass
class FedRound:
    """The Fed-Server's view of the round it aggregates (what `aggregate` may read)."""

    round: int
    global_state: dict[str, Tensor]  # the fp32 master copy the round started from
    broadcast: dict[str, Tensor]  # what the clients received this round (wire precision)
    # The template modules of the averaged state ("client", "aux"): a workspace for rebuilding
    # a client's state; a shared-model algorithm's clients trained exactly these in place.
    modules: dict[str, nn.Module]


class ServerRound:
    """The main server's side of one round: which server state serves each client.

    The default is one server model for every client (sequential SFL, decoupled SFL); SFLV1
    overrides it with one copy per client, averaged at the end.
    """

    def __init__(self, algo: SplitAlgorithm, server: ServerState) -> None:
        self.algo, self.server = algo, server

    def for_client(self, client_id: int) -> ServerState:
        """The server state client `client_id`'s uploads go to this round."""
        return self.server

    def client_done(self, server: ServerState, result: ClientResult) -> None:
        """Client `result.client_id` finished its round with `server` (from `for_client`)."""

    def end(self) -> None:
        """Every client of the round is done (before the Fed-Server aggregates)."""


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

    # The algorithm's own config table ([fsl_sage]): its name and frozen dataclass, declared
    # next to its code; every RunConfig then has it (`own_config`), `heronsfl ls --keys` lists it.
    config_section: ClassVar[str | None] = None
    Config: ClassVar[type[Any] | None] = None
    # zo.num_probes = 0 means this many (a ZO client's paper default).
    default_probes: ClassVar[int] = 1
    # Byte-count kind of what `client_payload` sends besides the state (comm/up_<kind>_bytes).
    exchange_kind: ClassVar[str] = "exchange"
    # What a client may send for its parameters (zo.exchange); "seeds" needs `result_state`.
    exchanges: ClassVar[tuple[str, ...]] = ("params",)

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.wire_dtype = WIRE_DTYPES[cfg.comm.wire_dtype]

    @property
    def own_config(self) -> Any:
        """This algorithm's own config section (its defaults if the config has none)."""
        assert self.config_section is not None and self.Config is not None, "no own section"
        return self.cfg.sections.get(self.config_section) or self.Config()

    @property
    def num_probes(self) -> int:
        """Random directions per step of a ZO client: zo.num_probes, or the paper default."""
        return self.cfg.zo.num_probes or self.default_probes

    @classmethod
    def config_problems(cls, cfg: RunConfig) -> list[str]:
        """What in `cfg` this algorithm cannot run, one line each naming the fix."""
        p = []
        if cfg.model.freeze_client and not (cls.uses_aux_head and cls.averages_aux):
            # The frozen-client control trains the aux head locally.
            p.append(
                f"model.freeze_client needs a client that trains its aux head, not "
                f"{cls.name!r}; use heron-sfl or cse-fsl"
            )
        if cfg.zo.exchange not in cls.exchanges:
            p.append(
                f"zo.exchange = {cfg.zo.exchange!r} needs a zeroth-order client, not "
                f"{cls.name!r}; use heron-sfl or mezo, or zo.exchange=params"
            )
        # The clients that step a ZO optimizer (heron-sfl, mezo) are those that can replay seeds.
        zo_optimizer = "seeds" in cls.exchanges
        if cfg.client_optim.name == "signsgd" and not zo_optimizer:
            p.append(
                f"client_optim.name = 'signsgd' needs a zeroth-order client, not {cls.name!r}; "
                "use heron-sfl or mezo, or adam / sgd"
            )
        if cfg.zo.aux_update == "backprop" and not (zo_optimizer and cls.uses_aux_head):
            p.append(
                f"zo.aux_update = 'backprop' needs a zeroth-order client with an aux head, not "
                f"{cls.name!r}; use heron-sfl"
            )
        pv = cfg.privacy  # the defenses act on uploaded activations and on a client that trains
        if (pv.noise_std > 0 or pv.clip_norm > 0) and not cls.uploads_activations:
            p.append(
                f"privacy.noise_std / privacy.clip_norm protect uploaded activations, and "
                f"{cls.name!r} uploads none; set them to 0 or use a split algorithm"
            )
        if pv.nopeek_weight > 0 and not (cls.supports_nopeek and cls.uploads_activations):
            p.append(
                f"privacy.nopeek_weight is not implemented for {cls.name!r}; set it to 0 or "
                "use heron-sfl, cse-fsl, sflv1 or sflv2"
            )
        if pv.nopeek_weight > 0 and cfg.model.freeze_client:
            p.append(
                "privacy.nopeek_weight trains the client against leakage, but model.freeze_client "
                "keeps it fixed; set one of them off"
            )
        return p

    def client_modules(
        self, model: SplitModel
    ) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
        """A client's modules by role: those the Fed-Server averages (client, and the aux head
        unless each client keeps its own) and those the client keeps for itself."""
        averaged: dict[str, nn.Module] = {"client": model.client}
        own: dict[str, nn.Module] = {}
        if self.uses_aux_head and model.aux is not None:
            (averaged if self.averages_aux else own)["aux"] = model.aux
        return averaged, own

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

    def client_payload(
        self, c: ClientState, modules: dict[str, nn.Module]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """What a client sends the Fed-Server after its round: (state, exchange).

        `modules` are the client's averaged modules; the state (full precision here, cast to
        the wire by the engine) is what travels of them, the exchange any other tensors the
        Fed-Server's `result_state` needs instead (sent as they are).
        """
        return travelling_state(modules), {}

    def _upload(self, c: ClientState, activations: Tensor, labels: Tensor) -> Upload:
        # The payload is cast to wire precision here: what is counted is what is sent.
        activations = protect_upload(self.cfg, c, activations)  # privacy defenses; off: as is
        return Upload(c.client_id, activations.detach().to(self.wire_dtype, copy=True), labels)

    def _where(self, c: ClientState) -> str:
        return f"at round {c.round}, client {c.client_id}, local step {c.step} ({self.name})"

    # ---------------------------------------------------------------- main server
    def new_server_optimizer(self, model: nn.Module) -> torch.optim.Optimizer | None:
        """The main server's one persistent optimizer (none if it has nothing to train)."""
        if not any(p.requires_grad for p in model.parameters()):
            return None
        return make_optimizer(model.parameters(), self.cfg.server_optim)

    def new_server_state(self, model: nn.Module) -> ServerState:
        return ServerState(model, self.new_server_optimizer(model))

    def begin_server_round(self, s: ServerState) -> ServerRound:
        """The main server's side of a new round (see ServerRound)."""
        return ServerRound(self, s)

    def turn_order(self, clients: list[int], round_idx: int) -> list[int]:
        """The order in which synchronous clients take their turns with the server."""
        return clients

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

    # ---------------------------------------------------------------- Fed-Server
    def weight(self, result: ClientResult) -> float:
        """A client's aggregation weight: 1/N (paper Eq. 8) or its data size."""
        return 1.0 if self.cfg.train.aggregation == "uniform" else float(result.num_samples)

    def result_state(self, fed: FedRound, result: ClientResult) -> dict[str, Tensor]:
        """A client's new state as the Fed-Server sees it (default: as uploaded)."""
        return result.state

    def aggregate(self, fed: FedRound, results: Sequence[ClientResult]) -> dict[str, Tensor]:
        """The new global state from the round's results: FedAvg, streamed (Eq. 8)."""
        avg = WeightedAverage()
        for result in results:
            if result.state or result.exchange:  # a shared-model client sends no state
                avg.add(self.result_state(fed, result), self.weight(result))
        return avg.result(like=fed.global_state)

    def synchronize(self, clients: Sequence[ClientState], comms: Sequence[CommCounter]) -> None:
        """The per-step cross-client step of a shared-model algorithm (shared_client_model);
        counts what it exchanges in each client's `comms`."""
        raise NotImplementedError(f"{self.name} does not share one client model")

    def model_bytes_per_round(self, averaged: dict[str, nn.Module]) -> tuple[int, int]:
        """Bytes of the per-round model exchange (down, up) at wire precision: `heronsfl bench`."""
        down = wire_nbytes(travelling_state(averaged).values(), self.wire_dtype)
        return down, down


def wire_nbytes(tensors: Iterable[Tensor], wire_dtype: torch.dtype) -> int:
    """Bytes as sent: floating tensors at wire precision, integer buffers as they are."""
    size = wire_dtype.itemsize
    return sum(t.numel() * (size if t.is_floating_point() else t.element_size()) for t in tensors)


def shared_state(modules: dict[str, nn.Module]) -> dict[str, Tensor]:
    """A detached copy of the modules' whole prefixed state (a shared model's new global)."""
    return {k: v.detach().clone() for k, v in prefixed_state(modules).items()}
