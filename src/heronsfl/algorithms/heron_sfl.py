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
  parameter size is stored.

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

from heronsfl.algorithms.base import (
    ClientState,
    FedRound,
    SplitAlgorithm,
    check_finite,
    head_loss,
    task_loss,
    wire_nbytes,
)
from heronsfl.messages import Batch, ClientResult, Upload
from heronsfl.privacy.defenses import nopeek_penalty
from heronsfl.rng import derive_seed
from heronsfl.state import load_prefixed, travelling_state
from heronsfl.zo.perturb import accumulate_grad_, dropout_off, frozen_batchnorm_stats, perturb_

_FIX = "lower client_optim.lr or zo.mu"


class HeronSFL(SplitAlgorithm):
    name: ClassVar[str] = "heron-sfl"
    summary: ClassVar[str] = "ZO client + aux head (2 forwards/step), FO server, upload every k"
    sends_gradients: ClassVar[bool] = False
    uses_aux_head: ClassVar[bool] = True
    zeroth_order_client: ClassVar[bool] = True
    exchanges: ClassVar[tuple[str, ...]] = ("params", "seeds")
    exchange_kind: ClassVar[str] = "zo_seeds_scalars"
    supports_nopeek: ClassVar[bool] = True  # the penalty is one more term of the forward loss

    def new_client_optimizer(self, c: ClientState) -> torch.optim.Optimizer | None:
        # ZO-SGD updates in place from the seeds: no optimizer object, no state.
        return None if self.cfg.client_optim.name == "sgd" else super().new_client_optimizer(c)

    def step_seed(self, c: ClientState) -> int:
        """One seed per (run, round, client, local step); the probes' seeds derive from it."""
        return derive_seed(self.cfg.seed, "zo", c.round, c.client_id, c.step)

    def probe_seeds(self, step_seed: int) -> list[int]:
        """The q direction seeds of a step: anyone holding the step seed regenerates every u_i."""
        return [derive_seed(step_seed, i) for i in range(self.num_probes)]

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
        params = c.trainable()
        x, y = batch.x, batch.y
        uploads = self.uploads_at(c.step)
        # The unperturbed forward runs *last*: its activations then go straight to the uplink and
        # never coexist with another forward's (the estimate is the same in any order).
        unperturbed = zo.estimator == "one-sided" or uploads
        step_seed = self.step_seed(c)
        seeds = self.probe_seeds(step_seed)
        plus: list[float] = []
        minus: list[float] = []
        with dropout_off(c.model, c.aux):
            for i, seed in enumerate(seeds):
                # Running BN statistics: from the unperturbed forward, else from the first probe.
                freeze = unperturbed or i > 0
                with frozen_batchnorm_stats(c.model, c.aux) if freeze else contextlib.nullcontext():
                    losses = self._probe(params, seed, lambda: self._loss(c, x, y))
                plus.append(losses[0])
                minus += losses[1:]
            upload: Upload | None = None
            loss0 = float("nan")
            if unperturbed:
                acts = c.model(x)  # (B, *cut_shape); updates BN running statistics once
                if zo.estimator == "one-sided":
                    loss0 = self._local_loss(c, x, acts, y).item()  # host sync
                if uploads:
                    upload = self._upload(c, acts, y)
                del acts
        if zo.estimator == "one-sided":
            check_finite(loss0, self._where(c), _FIX)
            scalars = [(lp - loss0) / zo.mu for lp in plus]
            c.losses.append(loss0)
        else:
            scalars = [(lp - lm) / (2 * zo.mu) for lp, lm in zip(plus, minus, strict=True)]
            c.losses.append(sum(plus + minus) / (2 * len(plus)))
        for g in scalars:
            check_finite(g, self._where(c), _FIX)
        self._apply(c, params, seeds, scalars)
        c.zo_record.append((step_seed, scalars))
        return upload

    def _probe(
        self, params: list[torch.Tensor], seed: int, loss: Callable[[], float] | None
    ) -> list[float]:
        """Evaluate the loss at θ+μu (and θ-μu, central) and return θ to where it was.

        With `loss=None` it performs exactly the same in-place parameter operations without the
        forwards: that is how the Fed-Server replays a client from its seeds (bit for bit).
        """
        zo = self.cfg.zo
        out: list[float] = []
        perturb_(params, seed, zo.mu, zo.distribution)
        if loss is not None:
            out.append(loss())
        if zo.estimator == "central":
            perturb_(params, seed, -2 * zo.mu, zo.distribution)
            if loss is not None:
                out.append(loss())
            perturb_(params, seed, zo.mu, zo.distribution)
        else:
            perturb_(params, seed, -zo.mu, zo.distribution)
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
        statistics depend on data and are uploaded as tensors instead.
        """
        params = c.trainable()
        for step_seed, gs in zip(step_seeds, scalars, strict=True):
            seeds = self.probe_seeds(step_seed)
            for seed in seeds:
                self._probe(params, seed, None)
            self._apply(c, params, seeds, gs)

    def _apply(
        self, c: ClientState, params: list[torch.Tensor], seeds: list[int], scalars: list[float]
    ) -> None:
        """θ <- θ - lr * (1/q) Σ g_i u_i, via Adam on the estimate or in-place ZO-SGD."""
        q = len(seeds)
        dist = self.cfg.zo.distribution
        if c.optimizer is None:  # ZO-SGD: regenerate each u_i and step along it
            for seed, g in zip(seeds, scalars, strict=True):
                perturb_(params, seed, -self.cfg.client_optim.lr * g / q, dist)
            return
        for seed, g in zip(seeds, scalars, strict=True):
            accumulate_grad_(params, seed, g / q, dist)
        c.optimizer.step()
        c.optimizer.zero_grad(set_to_none=True)  # the estimate buffer lives only for the update
