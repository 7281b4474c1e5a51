"""The one round loop, and `run_experiment`: simulate, log each round, summarise on success.

`run_rounds` drives any engine's rounds on the federation core: `heronsfl run`, `heronsfl sweep`
(through `run_experiment`) and the Flower ServerApp (`heronsfl deploy`) all end here, so they
write the same run directory: metrics.jsonl, an atomic checkpoint.pt after every round (a
restart with the same config resumes after the last one), the communication-budget stop, and
summary.json with the task's final metrics (E2E generation scores) at the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from heronsfl.config import RunConfig
from heronsfl.engines.simulation import Simulation
from heronsfl.federation import Federation
from heronsfl.metrics.log import RunWriter
from heronsfl.progress import RoundProgress

log = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]


def summarize(cfg: RunConfig, records: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    last = records[-1]
    evaluated = [r for r in records if "test/accuracy" in r]
    return {
        "algorithm": cfg.algorithm,
        "task": cfg.task,
        "rounds": len(records),
        "final": last,
        "best_test_accuracy": max((r["test/accuracy"] for r in evaluated), default=None),
        "wall_s": wall_s,
    }


def run_rounds(
    core: Federation,
    run_round: Callable[[], dict[str, Any]],
    writer: RunWriter | None,
    on_round: ProgressFn | None = None,
    on_resume: ProgressFn | None = None,
) -> dict[str, Any]:
    """Run `core`'s remaining rounds with `run_round` (the engine's); returns the summary.

    With a `writer`, resumes from its checkpoint (`on_resume` gets the last record, for an
    engine's own counters), logs every round, checkpoints after it, and writes summary.json last.
    """
    cfg = core.cfg
    records: list[dict[str, Any]] = []
    if writer is not None and writer.checkpoint is not None:
        writer.restore(core)
        records = list(writer.records)
        if on_resume is not None:
            on_resume(records[-1])
        log.warning("resuming %s after round %d", writer.dir, core.round)
    # wall_s keeps counting across a resume: time already spent, plus this process's.
    t0 = time.perf_counter() - (records[-1]["wall_s"] if records else 0.0)
    keep = writer is not None and cfg.privacy.keep_client_rounds
    if writer is not None and keep and core.round == 0:
        writer.save_client_round(0, core.client_snapshot())
    stopped = None
    while core.round < cfg.rounds:
        record = run_round()
        record["wall_s"] = time.perf_counter() - t0
        records.append(record)
        if writer is not None:
            writer.log(record)
            writer.save_checkpoint(core.state_dict())
            if keep:  # the attack's per-round targets (privacy.keep_client_rounds)
                writer.save_client_round(core.round, core.client_snapshot())
        if on_round is not None:
            on_round(record)
        sent = record["comm/uplink_bytes"] + record["comm/downlink_bytes"]
        if cfg.train.max_comm_bytes and sent >= cfg.train.max_comm_bytes:
            stopped = f"communication budget: {sent} >= train.max_comm_bytes"
            log.warning("stopping after round %d: %s", core.round, stopped)
            break
    summary = summarize(cfg, records, time.perf_counter() - t0)
    summary["stopped_early"] = stopped
    if core.task.final_metrics is not None:  # e.g. E2E generation scores
        summary["final_metrics"] = core.task.final_metrics(cfg, core.model, core.global_state)
    if writer is not None:
        writer.finish(summary)
    return summary


def run_experiment(
    cfg: RunConfig,
    out_dir: str | Path | None,
    overwrite: bool = False,
    on_round: ProgressFn | None = None,
    progress: RoundProgress | None = None,
) -> dict[str, Any]:
    """Run `cfg` in the simulator; with `out_dir`, write config.toml, metrics.jsonl and (last)
    summary.json."""
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    writer = RunWriter(out_dir, cfg, overwrite) if out_dir is not None else None
    try:
        sim = Simulation(cfg)
        if progress is not None:
            sim.progress = progress
        return run_rounds(sim, sim.run_round, writer, on_round)
    finally:
        if writer is not None:
            writer.close()
