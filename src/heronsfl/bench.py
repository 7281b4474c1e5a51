"""`heronsfl bench resources`: what one client local step costs, per algorithm, side by side.

Costs do not depend on data values, so the batch is random. Each algorithm gets a fresh client
with the task's split; one unmeasured warm-up step creates optimizer state (steady state), then
one upload step is measured: the costliest step of a decoupled client, and every step of a
synchronous one. Peak memory: a live-tensor high-water mark (parameters, gradients, optimizer
state, batch and temporaries) on CPU; torch.cuda.max_memory_allocated on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from heronsfl.algorithms import ALGORITHMS, get_algorithm
from heronsfl.algorithms.base import ClientState
from heronsfl.config import MAX_LOCAL_STEPS, RunConfig, _f, range_problem
from heronsfl.engines.step import local_step, measure_local_step
from heronsfl.errors import ConfigError
from heronsfl.federation import resolve_device
from heronsfl.messages import Batch
from heronsfl.metrics.memory import cuda_peak_bytes
from heronsfl.models.split import count_params
from heronsfl.registry import with_overrides
from heronsfl.rng import generator
from heronsfl.tasks import TASKS, build_split_model, get_task, size_problems


def _config(
    task: str, algorithm: str, batch_size: int, device: str, overrides: list[str], h: int
) -> RunConfig:
    return with_overrides(
        RunConfig(),
        [
            f"task={task}",
            f"algorithm={algorithm}",
            f"train.batch_size={batch_size}",
            f"device={device}",
            f"train.local_steps={max(h, 2)}",  # sizes per-round figures; 2 steps are run
            "train.upload_every=2",  # step 0 warms up, step 1 uploads and is measured
            "model.pretrained=false",  # costs need the architecture, not trained weights
            *overrides,
        ],
    )


def measure(cfg: RunConfig) -> dict[str, Any]:
    """Measure one upload step of cfg.algorithm's client on a random batch."""
    device = resolve_device(cfg.device)
    task = get_task(cfg.task)
    algo = get_algorithm(cfg.algorithm)(cfg)
    model = build_split_model(cfg, with_aux=algo.uses_aux_head, whole=algo.trains_whole_model)
    model.to(device)
    # On CUDA the allocator's peak would include the server's step: keep the server on the CPU.
    model.server.to("cpu")
    server = algo.new_server_state(model.server)
    c = ClientState(0, 1, model.client, model.aux, None)
    c.optimizer = algo.new_client_optimizer(c)
    x, y = task.random_batch(cfg.train.batch_size, generator(cfg.seed, "bench"))
    batch = Batch(x.to(device), y.to(device))
    c.step = 0
    local_step(algo, c, batch, server)  # warm-up: optimizer state now exists
    c.step = 1
    up, down, cost = measure_local_step(algo, c, batch, server)
    peak = cost.peak_mem_bytes
    if device.type == "cuda":
        c.step = 1
        resident = [
            m for m in (model.client, model.aux, c.optimizer, c.aux_optimizer) if m is not None
        ]
        peak = cuda_peak_bytes(
            lambda: local_step(algo, c, batch, server), *resident, batch.x, batch.y
        )
    # The per-round model exchange, as the algorithm sends it (engines/client.py).
    down, up = algo.model_bytes_per_round(algo.client_modules(model)[0])
    return {
        "algorithm": cfg.algorithm,
        "task": cfg.task,
        "device": device.type,
        "batch_size": cfg.train.batch_size,
        "cut": model.cut,
        "cut_shape": list(model.cut_shape),
        "input_shape": list(x.shape[1:]),  # LM tasks: [T], the sequence length
        "client_params": count_params(model.client),
        "aux_params": count_params(model.aux) if algo.uses_aux_head else 0,
        "client_peak_mem_bytes": int(peak),
        "client_flops_per_step": cost.flops,
        "client_macs_per_step": cost.flops / 2,
        "upload_bytes": cost.uplink_bytes,
        "downlink_bytes_per_step": cost.downlink_bytes,
        "model_down_bytes_per_round": down,
        "model_up_bytes_per_round": up,
        "model_bytes_per_round": down + up,  # at wire precision
        "wire_dtype": cfg.comm.wire_dtype,
        "zo_exchange": cfg.zo.exchange if algo.zeroth_order_client else None,
    }


# `--zo-options`: HERON-SFL's zeroth-order client options (zo/directions.py, zo/optim.py, the
# hybrid client), each measured like an algorithm. Label -> overrides on top of heron-sfl.
ZO_OPTIONS: dict[str, list[str]] = {
    "zo-sgd": ["client_optim.name=sgd"],
    "zo-sgd-m": ["client_optim.name=sgd", "client_optim.momentum=0.9"],
    "zo-signsgd": ["client_optim.name=signsgd"],
    "lowrank": ["client_optim.name=sgd", "zo.perturbation=lowrank"],
    "lozo-m": ["client_optim.name=sgd", "client_optim.momentum=0.9", "zo.perturbation=lowrank"],
    "sparse": ["client_optim.name=sgd", "zo.perturbation=sparse"],
    "sparse-mag": ["client_optim.name=sgd", "zo.perturbation=sparse-magnitude"],
    "block": ["client_optim.name=sgd", "zo.perturbation=block"],
    "q=4": ["client_optim.name=sgd", "zo.num_probes=4"],
    "q=4 central": ["client_optim.name=sgd", "zo.num_probes=4", "zo.estimator=central"],
    "q=4 batched": ["client_optim.name=sgd", "zo.num_probes=4", "zo.probe_batch=batched"],
    "hybrid": ["client_optim.name=sgd", "zo.aux_update=backprop"],
    "hybrid lozo-m": [
        "client_optim.name=sgd",
        "client_optim.momentum=0.9",
        "zo.perturbation=lowrank",
        "zo.aux_update=backprop",
    ],
    # With the presets' ZO-Adam client, as docs/results/zo-client.md's CIFAR-10 runs use it
    "adam sparse": ["zo.perturbation=sparse"],
    "hybrid adam": ["zo.aux_update=backprop"],
    "hybrid adam sparse-mag": ["zo.aux_update=backprop", "zo.perturbation=sparse-magnitude"],
}


@dataclass(frozen=True)
class BenchFlags:
    """`heronsfl bench resources` flags, checked by the same range walker as config fields."""

    batch_size: int = _f(1, "--batch-size", check=">0")
    upload_every: int = _f(1, "--upload-every", check=">0")
    local_steps: int = _f(39, "--local-steps", check=f"[1, {MAX_LOCAL_STEPS}]")


def check_flags(
    task: str,
    batch_size: int | None,
    algorithms: list[str] | None,
    upload_every: int,
    local_steps: int,
) -> None:
    """Every problem with the bench flags at once, before anything is built."""
    problems: list[str] = []
    if task not in TASKS:
        problems.append(f"--task {task!r} is unknown; known: {', '.join(sorted(TASKS))}")
    flags = {
        "--batch-size": ("batch_size", 1 if batch_size is None else batch_size),
        "--upload-every": ("upload_every", upload_every),
        "--local-steps": ("local_steps", local_steps),
    }
    checks = {f.name: f.metadata["check"] for f in fields(BenchFlags)}
    for flag, (name, value) in flags.items():
        if (problem := range_problem(flag, value, checks[name])) is not None:
            problems.append(problem)
    if 0 < local_steps < upload_every:
        problems.append(
            f"--upload-every {upload_every} > --local-steps {local_steps}: a client would "
            "never upload; give k <= h"
        )
    if algorithms is not None:
        named = [a for a in algorithms if a]
        if not named:
            problems.append(
                f"--algorithms names no algorithm; give a comma-separated list from: "
                f"{', '.join(ALGORITHMS)}"
            )
        problems += [
            f"--algorithms: unknown algorithm {a!r}; known: {', '.join(sorted(ALGORITHMS))}"
            for a in named
            if a not in ALGORITHMS
        ]
        if any(not a for a in algorithms) and named:
            problems.append("--algorithms has an empty name (two commas in a row?)")
    if not problems and batch_size is not None:  # the batch is materialised: must fit
        problems += [f"--batch-size: {p}" for p in size_problems(RunConfig(task=task), batch_size)]
    if problems:
        raise ConfigError(problems)


def resources(
    task: str,
    batch_size: int | None = None,
    algorithms: list[str] | None = None,
    device: str = "cpu",
    upload_every: int = 1,
    overrides: list[str] = (),  # type: ignore[assignment]
    local_steps: int = 39,
    zo_options: bool = False,
) -> list[dict[str, Any]]:
    """One row per algorithm, plus one with the seeds exchange for each that offers it, plus
    (`zo_options`) one HERON-SFL row per ZO_OPTIONS entry.

    `local_steps` (h) sizes the per-round exchanges that grow with it: the seeds exchange's
    h * (8 + 4q) bytes and HO-SFL's h * 4P scalars each way.
    """
    # By default every registered algorithm whose needs the task meets (Task.provides).
    provides = get_task(task).provides
    names = algorithms or [n for n, a in ALGORITHMS.items() if a.requires <= provides]
    batch_size = batch_size or get_task(task).paper_batch_size
    variants: list[tuple[str, str, list[str]]] = [(name, name, []) for name in names]
    # (an unknown name is reported by the config check, with the known ones)
    seeds = [n for n in names if n in ALGORITHMS and "seeds" in ALGORITHMS[n].exchanges]
    # Not with a first-order aux head (zo.aux_update=backprop): it cannot be replayed.
    if "zo.aux_update=backprop" not in overrides:
        variants += [(f"{n} (seeds)", n, ["zo.exchange=seeds"]) for n in seeds]
    if zo_options and "heron-sfl" in names:
        variants += [(f"heron {k}", "heron-sfl", v) for k, v in ZO_OPTIONS.items()]
    rows = []
    for label, name, extra in variants:
        cfg = _config(task, name, batch_size, device, [*overrides, *extra], local_steps)
        row = measure(cfg)
        row["label"] = label
        # A decoupled client uploads every k-th step; a synchronous one every step.
        k = 1 if ALGORITHMS[name].sends_gradients else upload_every
        row["upload_every"] = k
        row["uplink_bytes_per_step"] = row["upload_bytes"] / k
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]], baseline: str = "sflv2") -> str:
    """The paper's Table 2 layout: memory and compute per client step, plus bytes, with ratios
    to the `baseline` row (the paper's: SFLV2; else the first row)."""
    base = next((r for r in rows if r["label"] == baseline), rows[0])
    head = (
        f"{'algorithm':<20}{'peak mem (MB)':>15}{'vs ' + base['algorithm']:>12}"
        f"{'MACs/step (G)':>16}{'vs ' + base['algorithm']:>12}{'up/step (MB)':>14}"
        f"{'down/step (MB)':>16}{'model down/round (MB)':>23}{'model up/round (MB)':>21}"
    )
    lines = [
        f"task {rows[0]['task']}, cut {rows[0]['cut']} {tuple(rows[0]['cut_shape'])}, "
        f"batch {rows[0]['batch_size']}, device {rows[0]['device']}, wire {rows[0]['wire_dtype']}",
        head,
        "-" * len(head),
    ]
    for r in rows:
        lines.append(
            f"{r['label']:<20}{r['client_peak_mem_bytes'] / 1e6:>15.1f}"
            f"{r['client_peak_mem_bytes'] / base['client_peak_mem_bytes']:>12.2f}"
            f"{r['client_macs_per_step'] / 1e9:>16.2f}"
            f"{r['client_macs_per_step'] / base['client_macs_per_step']:>12.2f}"
            f"{r['uplink_bytes_per_step'] / 1e6:>14.2f}{r['downlink_bytes_per_step'] / 1e6:>16.2f}"
            f"{r['model_down_bytes_per_round'] / 1e6:>23.3f}"
            f"{r['model_up_bytes_per_round'] / 1e6:>21.3f}"
        )
    return "\n".join(lines)
