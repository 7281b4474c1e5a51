"""HERON-SFL: decoupled split federated learning with zeroth-order clients.

Paper: "HERON-SFL" (arXiv 2601.09076). The client sub-model plus a small auxiliary head are
trained on a local loss l(θ) = CE(aux(client(x)), y) with the two-point zeroth-order estimator of
Eq. 2: no backward pass, no stored activations, and the random direction u regenerated from its
seed instead of stored (MeZO, Malladi et al. 2023, arXiv 2305.17333). Every k-th local step the
client uploads the activations of its unperturbed forward; the main server trains the rest of
the network with first-order steps (base class) and never answers. The Fed-Server averages the
client and aux parameters (Eq. 8).

Symbols: μ = zo.mu, q = zo.num_probes (default 1), h = train.local_steps, k = train.upload_every.

Estimators (zo.estimator):
- one-sided (Eq. 2): g_i = (l(θ + μu_i) - l(θ)) / μ, with q + 1 forwards per step.
- central (MeZO):    g_i = (l(θ + μu_i) - l(θ - μu_i)) / 2μ, with 2q forwards per step
  (plus one client-only forward on upload steps, to upload unperturbed activations).
The estimate is (1/q) Σ g_i u_i. For u ~ N(0, I) and for u uniform on the sphere of radius
sqrt(d), E[u uᵀ] = I, so the d factor that Eq. 2 carries for unit-sphere u is already in the norm.

Updates (client_optim.name):
- adam: the estimate is written into .grad and Adam steps (paper: Adam, lr 1e-4); costs a
  gradient buffer and two moments of parameter size.
- sgd:  θ -= lr * g_i * u_i / q applied in place by regenerating u_i (MeZO's ZO-SGD): nothing of
  parameter size is stored. With client_optim.momentum > 0: ZO-SGD with momentum (LOZO-M's
  factor momentum under low-rank directions); signsgd: ZO-SignSGD. See zo/optim.py.

Beyond the paper, the shape of u follows zo.perturbation (dense, lowrank, sparse,
sparse-magnitude, block; zo/directions.py, each regenerated from seeds), and zo.aux_update =
"backprop" makes a hybrid client: the client sub-model stays zeroth-order while the aux head
takes a first-order step on the unperturbed cut activation, which the client computes anyway
for its upload. The backward runs inside the aux head only (its input needs no gradient), so
no client activation is kept for a backward; the aux head costs one gradient and Adam's two
moments of its own size. The client's probes then perturb the client sub-model alone.
With zo.probe_batch = "batched" the q probes run as one vmapped forward over q perturbed
copies of the parameters (θ itself is not moved, so the replay skips the round trips): the same
MACs in fewer, larger kernels, for q parameter copies and q forwards' activations at once.

BatchNorm uses batch statistics in every forward; running statistics are updated once per step,
by the unperturbed forward (central: by the first perturbed forward when there is none). The
unperturbed forward runs after the perturbed ones, so the activations it uploads never coexist
with another forward's: peak client memory is that of a single inference forward.

Deviations from the paper:
- The paper does not fix μ, h, k or q; the presets document the values chosen.
- In-place perturb/restore is exact to one fp32 ulp, not bit for bit (see zo/perturb.py).

Beyond the paper, zo.exchange = "seeds": instead of its parameters a client uploads, per local
step, the step seed (8 bytes) and its q scalars g_i (4 bytes each), plus its BatchNorm buffers
(which depend on data). The Fed-Server replays the round from the broadcast state: exact for
ZO-SGD and for Adam alike, because the client's Adam starts fresh every round and the replay
re-runs the very same operations (including the one-ulp perturb/restore round trips).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call

from heronsfl.algorithms.base import (
    ClientState,
    FedRound,
    SplitAlgorithm,
    check_finite,
    head_loss,
    make_optimizer,
    task_loss,
    wire_nbytes,
)
from heronsfl.messages import Batch, ClientResult, Upload
from heronsfl.privacy.defenses import nopeek_penalty
from heronsfl.rng import derive_seed
from heronsfl.state import load_prefixed, travelling_state
from heronsfl.zo.directions import StepDirections
from heronsfl.zo.optim import LowRankMomentum, ZOSignSGD
from heronsfl.zo.perturb import dropout_off, frozen_batchnorm_stats

_FIX = "lower client_optim.lr or zo.mu"


class _LocalLoss(nn.Module):
    """The local loss as one module, so torch.func can swap in perturbed parameters."""

    def __init__(
        self,
        model: nn.Module,
        aux: nn.Module | None,
        loss: Callable[[Tensor, Tensor, Tensor], Tensor],
    ) -> None:
        super().__init__()
        self.model, self.aux, self.loss = model, aux, loss

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.loss(x, self.model(x), y)  # loss(x, acts, y) reads self.aux's parameters


class HeronSFL(SplitAlgorithm):
    name: ClassVar[str] = "heron-sfl"
    summary: ClassVar[str] = "ZO client + aux head (2 forwards/step), FO server, upload every k"
    sends_gradients: ClassVar[bool] = False
    uses_aux_head: ClassVar[bool] = True
    zeroth_order_client: ClassVar[bool] = True
    exchanges: ClassVar[tuple[str, ...]] = ("params", "seeds")
    exchange_kind: ClassVar[str] = "zo_seeds_scalars"
    supports_nopeek: ClassVar[bool] = True  # the penalty is one more term of the forward loss

    def zo_params(self, c: ClientState) -> list[torch.Tensor]:
        """The parameters the ZO estimate covers: all trainable ones, or (hybrid) the client's."""
        if self.cfg.zo.aux_update == "backprop":
            return [p for p in c.model.parameters() if p.requires_grad]
        return c.trainable()

    def new_client_optimizer(self, c: ClientState) -> torch.optim.Optimizer | None:
        """The ZO update's optimizer (None: in-place ZO-SGD, no state); a hybrid client's aux
        head gets its own first-order Adam in c.aux_optimizer."""
        o, zo = self.cfg.client_optim, self.cfg.zo
        if zo.aux_update == "backprop" and c.aux is not None:
            c.aux_optimizer = torch.optim.Adam(c.aux.parameters(), lr=zo.aux_lr or o.lr)
        params = self.zo_params(c)
        if not params or (o.name == "sgd" and o.momentum == 0):
            return None  # ZO-SGD updates in place from the seeds: no optimizer object, no state
        if o.name == "signsgd":
            return ZOSignSGD(params, o.lr, o.momentum)
        if o.name == "sgd" and zo.perturbation == "lowrank":
            return LowRankMomentum(params, o.lr, o.momentum)
        return make_optimizer(params, o)  # Adam, or torch SGD with momentum on the estimate

    def step_seed(self, c: ClientState, step: int | None = None) -> int:
        """One seed per (run, round, client, local step); the probes' seeds derive from it."""
        return derive_seed(
            self.cfg.seed, "zo", c.round, c.client_id, c.step if step is None else step
        )

    def probe_seeds(self, step_seed: int) -> list[int]:
        """The q direction seeds of a step: anyone holding the step seed regenerates every u_i."""
        return [derive_seed(step_seed, i) for i in range(self.num_probes)]

    def directions(self, params: list[torch.Tensor], step: int, window_seed: int) -> StepDirections:
        """The step's direction generator; `window_seed` is the step seed of the first step of
        the step's lazy-V window (lowrank), so the replay can rebuild it from the seeds."""
        zo = self.cfg.zo
        v_seed = derive_seed(window_seed, "lowrank-v") if zo.perturbation == "lowrank" else 0
        return StepDirections.from_config(params, zo, step, v_seed)

    def _local_loss(
        self, c: ClientState, x: torch.Tensor, acts: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """The local loss: through the aux head, or on the model's own output (MeZO), plus the
        NoPeek penalty when privacy.nopeek_weight > 0 (forwards only, like the rest)."""
        loss = task_loss(acts, y) if c.aux is None else head_loss(c.aux, acts, y)
        penalty = nopeek_penalty(self.cfg, x, acts)
        return loss if penalty is None else loss + penalty

    def _loss(self, c: ClientState, x: torch.Tensor, y: torch.Tensor) -> float:
        return self._local_loss(c, x, c.model(x), y).item()  # host sync: the ZO scalar

    @torch.no_grad()
    def client_step(self, c: ClientState, batch: Batch) -> Upload | None:
        zo = self.cfg.zo
        params = self.zo_params(c)
        hybrid = zo.aux_update == "backprop"
        x, y = batch.x, batch.y
        uploads = self.uploads_at(c.step)
        # The unperturbed forward runs *last*: its activations then go straight to the uplink and
        # never coexist with another forward's (the estimate is the same in any order).
        unperturbed = zo.estimator == "one-sided" or uploads or hybrid
        step_seed = self.step_seed(c)
        seeds = self.probe_seeds(step_seed) if params else []  # a frozen hybrid has no probes
        dirs = self.directions(params, c.step, self.step_seed(c, c.step - c.step % zo.v_every))
        plus: list[float] = []
        minus: list[float] = []
        with dropout_off(c.model, c.aux):
            if zo.probe_batch == "batched" and seeds:
                with frozen_batchnorm_stats(c.model, c.aux):
                    plus, minus = self._batched_losses(c, dirs, seeds, x, y)
                seeds_left: list[int] = []
            else:
                seeds_left = seeds
            for i, seed in enumerate(seeds_left):
                # Running BN statistics: from the unperturbed forward, else from the first probe.
                freeze = unperturbed or i > 0
                with frozen_batchnorm_stats(c.model, c.aux) if freeze else contextlib.nullcontext():
                    losses = self._probe(dirs, seed, lambda: self._loss(c, x, y))
                plus.append(losses[0])
                minus += losses[1:]
            upload: Upload | None = None
            loss0 = float("nan")
            if unperturbed:
                acts = c.model(x)  # (B, *cut_shape); updates BN running statistics once
                if hybrid:
                    loss0 = self._aux_backprop(c, acts, y)
                    penalty = nopeek_penalty(self.cfg, x, acts)  # the ZO loss's other term
                    loss0 += 0.0 if penalty is None else float(penalty)
                elif zo.estimator == "one-sided":
                    loss0 = self._local_loss(c, x, acts, y).item()  # host sync
                if uploads:
                    upload = self._upload(c, acts, y)
                del acts
        if zo.estimator == "one-sided" or hybrid:
            check_finite(loss0, self._where(c), _FIX)
            c.losses.append(loss0)
        if zo.estimator == "one-sided":
            scalars = [(lp - loss0) / zo.mu for lp in plus]
        else:
            scalars = [(lp - lm) / (2 * zo.mu) for lp, lm in zip(plus, minus, strict=True)]
            if not hybrid:
                c.losses.append(sum(plus + minus) / (2 * len(plus)))
        for g in scalars:
            check_finite(g, self._where(c), _FIX)
        self._apply(c, dirs, seeds, scalars)
        c.zo_record.append((step_seed, scalars))
        return upload

    def _aux_backprop(self, c: ClientState, acts: torch.Tensor, y: torch.Tensor) -> float:
        """Hybrid client: one first-order step of the aux head on the (detached) cut activation.

        The graph starts at `acts`, which needs no gradient: the backward stays in the aux head.
        Returns the aux loss before the step (the one-sided estimator's l(θ)).
        """
        assert c.aux is not None and c.aux_optimizer is not None, "hybrid needs an aux head"
        with torch.enable_grad():
            loss = head_loss(c.aux, acts, y)
            c.aux_optimizer.zero_grad(set_to_none=True)
            loss.backward()
        c.aux_optimizer.step()
        c.aux_optimizer.zero_grad(set_to_none=True)  # the gradient lives only for the step
        return float(loss.item())  # host sync

    def _batched_losses(
        self, c: ClientState, dirs: StepDirections, seeds: list[int], x: Tensor, y: Tensor
    ) -> tuple[list[float], list[float]]:
        """Every probe's loss from one vmapped forward over perturbed copies of the parameters.

        θ itself is never moved (no perturb/restore round trips): copy i holds fl(θ ± μu_i).
        Costs q (central: 2q) copies of the perturbed parameters and as many forwards'
        activations at once. BatchNorm uses batch statistics in every copy (running statistics
        come from the unperturbed forward, when the step has one).
        """
        zo = self.cfg.zo
        local = _LocalLoss(c.model, c.aux, lambda x, a, y: self._local_loss(c, x, a, y))
        names = {id(p): n for n, p in local.named_parameters()}
        signs = [1.0] if zo.estimator == "one-sided" else [1.0, -1.0]
        n = len(seeds) * len(signs)
        stacked: dict[str, Tensor] = {}
        for i, seed in enumerate(seeds):
            for p, u in dirs.directions(seed):
                name = names[id(p)]
                if name not in stacked:  # n copies of θ, then each moved along its own u
                    stacked[name] = p.detach().expand(n, *p.shape).clone()
                for j, sign in enumerate(signs):
                    stacked[name][i * len(signs) + j].add_(u, alpha=sign * zo.mu)
        fixed = {k: v for k, v in local.named_parameters() if k not in stacked}
        fixed |= dict(local.named_buffers())

        def loss(params: dict[str, Tensor]) -> Tensor:
            return functional_call(local, {**params, **fixed}, (x, y))

        losses = torch.vmap(loss)(stacked).tolist()  # (n,); one host sync for all probes
        return losses[:: len(signs)], losses[1 :: len(signs)]

    def _probe(
        self, dirs: StepDirections, seed: int, loss: Callable[[], float] | None
    ) -> list[float]:
        """Evaluate the loss at θ+μu (and θ-μu, central) and return θ to where it was.

        With `loss=None` it performs exactly the same in-place parameter operations without the
        forwards: that is how the Fed-Server replays a client from its seeds (bit for bit).
        """
        zo = self.cfg.zo
        out: list[float] = []
        dirs.perturb_(seed, zo.mu)
        if loss is not None:
            out.append(loss())
        if zo.estimator == "central":
            dirs.perturb_(seed, -2 * zo.mu)
            if loss is not None:
                out.append(loss())
            dirs.perturb_(seed, zo.mu)
        else:
            dirs.perturb_(seed, -zo.mu)
        return out

    # ---------------------------------------------------------------- the seeds exchange
    def client_payload(
        self, c: ClientState, modules: dict[str, nn.Module]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """zo.exchange = "seeds": parameters stay home, the Fed-Server replays them from the
        (step seed, scalars) pairs; buffers (BatchNorm statistics) depend on data and travel."""
        state, exchange = super().client_payload(c, modules)
        if self.cfg.zo.exchange != "seeds":
            return state, exchange
        params = {f"{p}.{n}" for p, m in modules.items() for n, _ in m.named_parameters()}
        state = {k: v for k, v in state.items() if k not in params}
        seeds = torch.tensor([s for s, _ in c.zo_record], dtype=torch.int64)  # (h,)
        scalars = torch.tensor([g for _, g in c.zo_record], dtype=torch.float32)  # (h, q)
        return state, {"seeds": seeds, "scalars": scalars}

    def result_state(self, fed: FedRound, result: ClientResult) -> dict[str, Tensor]:
        """As uploaded, or (seeds exchange) rebuilt by replaying the client's steps from this
        round's broadcast state in the template modules."""
        if not result.exchange:
            return result.state
        mods = fed.modules
        load_prefixed(mods, fed.broadcast)
        c = ClientState(result.client_id, fed.round, mods["client"], mods.get("aux"), None)
        c.optimizer = self.new_client_optimizer(c)
        ex = result.exchange
        self.replay(c, ex["seeds"].tolist(), ex["scalars"].tolist())
        return {**travelling_state(mods), **result.state}

    def model_bytes_per_round(self, averaged: dict[str, nn.Module]) -> tuple[int, int]:
        down, up = super().model_bytes_per_round(averaged)
        if self.cfg.zo.exchange == "seeds":
            # Per local step one 8-byte step seed and q fp32 scalars; buffers still travel.
            buffers = [t for m in averaged.values() for t in m.buffers()]
            steps = self.cfg.train.local_steps
            up = wire_nbytes(buffers, self.wire_dtype) + steps * (8 + 4 * self.num_probes)
        return down, up

    @torch.no_grad()
    def replay(self, c: ClientState, step_seeds: list[int], scalars: list[list[float]]) -> None:
        """Rebuild a client's round from its uploaded (step seed, q scalars) pairs.

        `c` holds modules loaded with the state the client started from and a fresh optimizer,
        as the client had. Replaying the same perturb/restore/update operations in the same
        order gives the client's parameters exactly (same device and dtype); BatchNorm running
        statistics depend on data and are uploaded as tensors instead. The step index (block
        directions) is the position in the list; the lazy V seed comes from its window's first
        step seed.
        """
        params = self.zo_params(c)
        nu = self.cfg.zo.v_every
        for t, (step_seed, gs) in enumerate(zip(step_seeds, scalars, strict=True)):
            seeds = self.probe_seeds(step_seed)
            dirs = self.directions(params, t, step_seeds[t - t % nu])
            for seed in seeds if self.cfg.zo.probe_batch == "sequential" else []:
                self._probe(dirs, seed, None)
            self._apply(c, dirs, seeds, gs)

    def _apply(
        self, c: ClientState, dirs: StepDirections, seeds: list[int], scalars: list[float]
    ) -> None:
        """θ <- θ - lr * (1/q) Σ g_i u_i, via the client optimizer or in-place ZO-SGD."""
        q = len(seeds)
        if not seeds:
            return
        if c.optimizer is None:  # ZO-SGD: regenerate each u_i and step along it
            for seed, g in zip(seeds, scalars, strict=True):
                dirs.perturb_(seed, -self.cfg.client_optim.lr * g / q)
            return
        if isinstance(c.optimizer, LowRankMomentum):
            c.optimizer.zo_step(dirs, seeds, scalars)
            return
        for seed, g in zip(seeds, scalars, strict=True):
            dirs.accumulate_grad_(seed, g / q)
        c.optimizer.step()
        c.optimizer.zero_grad(set_to_none=True)  # the estimate buffer lives only for the update
