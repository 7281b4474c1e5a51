"""HO-SFL: hybrid-order split federated learning with a Lagrangian surrogate.

Paper: Chen, Wu, Wang, Chen, "HO-SFL" (arXiv 2603.14773). Each local step:
1. Client: unperturbed forward z = f_c(x), uploads (z, y).
2. Main server: one FO step, returns λ = ∂l/∂z.
3. Client: P perturbed forwards z_p = f_c(x; θ + μu_p), the u_p drawn from seeds shared by all
   clients, and uploads only the P scalars v_p = <λ, z_p − z>.
4. Server: averages the scalars over clients, v̄_p, and broadcasts them.
5. Every client applies θ ← θ − η/(Pμ) Σ_p v̄_p u_p, regenerating u_p from the seeds.
Since every client starts from the same θ and applies the same update, the client models stay
identical: the client-model exchange is seeds + scalars only ("dimension-free"), and there is
no Fed-Server averaging of parameters. Symbols: P = zo.num_probes (default 5, the paper's for
vision), μ = zo.mu (paper: 1e-3), η = client_optim.lr.

The shape of u_p follows zo.perturbation like HERON-SFL's (zo/directions.py: dense, lowrank,
sparse, sparse-magnitude, block); the lazy V of lowrank directions is shared by every client
for zo.v_every steps. The update stays the paper's plain step (client_optim.name is not used).

Deviations from the paper:
- BatchNorm running statistics are local to each client in a deployment (each client sends its
  buffers at the end of the round, averaged by `aggregate`); the simulator keeps the shared
  client model's, updated by every client's unperturbed forward in turn (not sent).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from heronsfl.aggregation import WeightedAverage
from heronsfl.algorithms.base import ClientState, FedRound, SplitAlgorithm, shared_state
from heronsfl.messages import Batch, ClientResult, Download, Upload
from heronsfl.metrics.comm import CommCounter
from heronsfl.rng import derive_seed
from heronsfl.zo.directions import StepDirections
from heronsfl.zo.perturb import dropout_off, frozen_batchnorm_stats


class HOSFL(SplitAlgorithm):
    name: ClassVar[str] = "ho-sfl"
    summary: ClassVar[str] = "ZO client via server λ and P shared-seed probes; scalars only"
    sends_gradients: ClassVar[bool] = True
    uses_aux_head: ClassVar[bool] = False
    zeroth_order_client: ClassVar[bool] = True
    shared_client_model: ClassVar[bool] = True
    default_probes: ClassVar[int] = 5  # P, the paper's value for vision

    _dirs: tuple[tuple[int, int, int], StepDirections] | None = None

    def new_client_optimizer(self, c: ClientState) -> torch.optim.Optimizer | None:
        return None  # the update is in place, from the broadcast scalars

    def probe_seeds(self, round_idx: int, step: int) -> list[int]:
        """Shared by every client: the same u_p everywhere, so averaged scalars make sense."""
        return [
            derive_seed(self.cfg.seed, "ho-sfl", round_idx, step, p) for p in range(self.num_probes)
        ]

    def directions(self, params: list[torch.Tensor], round_idx: int, step: int) -> StepDirections:
        """The step's shared direction generator, built once per (round, step) and reused by
        every client and by `synchronize` (the sparse-magnitude masks come from θ at the first
        use, before any probe of the step moves it)."""
        key = (round_idx, step, id(params[0]))  # one model's parameters, one step
        if self._dirs is None or self._dirs[0] != key:
            zo = self.cfg.zo
            window = step - step % zo.v_every
            v_seed = derive_seed(self.cfg.seed, "ho-sfl-v", round_idx, window)
            dirs = StepDirections.from_config(params, zo, step, v_seed)
            self._dirs = (key, dirs)
        return self._dirs[1]

    @torch.no_grad()
    def client_step(self, c: ClientState, batch: Batch) -> Upload | None:
        with dropout_off(c.model):
            z = c.model(batch.x)  # (B, *cut_shape); updates BN running statistics
        c.pending = z
        c.pending_input = batch.x
        return self._upload(c, z, batch.y)

    @torch.no_grad()
    def client_apply(self, c: ClientState, down: Download) -> None:
        """v_p = <λ, z_p − z> for the P shared directions; kept for the cross-client step."""
        assert c.pending is not None and c.pending_input is not None, "client_step first"
        lam = down.gradient.to(c.pending)  # λ at the client's dtype and device
        params, mu = c.trainable(), self.cfg.zo.mu
        dirs = self.directions(params, c.round, c.step)
        scalars = []
        with dropout_off(c.model), frozen_batchnorm_stats(c.model):
            for seed in self.probe_seeds(c.round, c.step):
                dirs.perturb_(seed, mu)
                z_p = c.model(c.pending_input)
                dirs.perturb_(seed, -mu)
                scalars.append(float((lam * (z_p - c.pending)).sum()))  # host sync per probe
                del z_p
        c.pending = c.pending_input = None
        c.zo_record.append((c.step, scalars))

    @torch.no_grad()
    def synchronize(self, clients: Sequence[ClientState], comms: Sequence[CommCounter]) -> None:
        """Server averages the clients' scalars; every client applies the same update.

        The clients share one model here, so the update is applied once. Each client sends its
        P scalars and receives the P averages v̄ (fp32), counted in its `comms`.
        """
        mean = self.mean_scalars([torch.tensor(c.zo_record[-1][1]) for c in clients])
        self.apply_scalars(clients[0], mean)
        for c, comm in zip(clients, comms, strict=True):
            comm.add("up", "zo_scalars", [torch.tensor(c.zo_record[-1][1])])
            comm.add("down", "zo_scalars", [mean])

    @staticmethod
    def mean_scalars(scalars: Sequence[Tensor]) -> Tensor:
        """The server's half of the step: v̄ = the mean of the clients' (P,) scalars, fp32."""
        return torch.stack([v.to(torch.float32) for v in scalars]).mean(0)

    @torch.no_grad()
    def replay_probes(self, c: ClientState) -> None:
        """What one client's probes leave on θ: each +μu_p, −μu_p pair, without the forwards.
        Exact in real numbers, not in floating point; a replica of the shared model (the
        deployed server's) replays every client's probes to stay the simulator's model."""
        dirs, mu = self.directions(c.trainable(), c.round, c.step), self.cfg.zo.mu
        for seed in self.probe_seeds(c.round, c.step):
            dirs.perturb_(seed, mu)
            dirs.perturb_(seed, -mu)

    @torch.no_grad()
    def apply_scalars(self, c: ClientState, mean: Tensor) -> None:
        """The clients' half: θ ← θ − η/(Pμ) Σ_p v̄_p u_p for local step `c.step` (in a
        deployment every client applies it to its own copy, and the server to its replica)."""
        params, mu, lr = c.trainable(), self.cfg.zo.mu, self.cfg.client_optim.lr
        p_count = len(mean)
        dirs = self.directions(params, c.round, c.step)
        for seed, v in zip(self.probe_seeds(c.round, c.step), mean.tolist(), strict=True):
            dirs.perturb_(seed, -lr * v / (p_count * mu))

    def aggregate(self, fed: FedRound, results: Sequence[ClientResult]) -> dict[str, Tensor]:
        """No parameters travel: the new global state is the shared model the clients trained.

        Deployed clients each hold their own copy, so their BatchNorm buffers differ; they send
        those (and only those) at the end of the round, and the buffers are averaged here.
        """
        state = shared_state(fed.modules)
        sent = [result for result in results if result.state]
        if sent:
            avg = WeightedAverage()
            for result in sent:
                avg.add(result.state, self.weight(result))
            state.update(avg.result(like={k: state[k] for k in sent[0].state}))
        return state

    def model_bytes_per_round(self, averaged: dict[str, nn.Module]) -> tuple[int, int]:
        # No parameters travel: P fp32 scalars up and P down per local step.
        per_round = self.cfg.train.local_steps * 4 * self.num_probes
        return per_round, per_round
