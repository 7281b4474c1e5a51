"""Run one experiment end to end: simulate, log each round, summarise on success."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from heronsfl.config import RunConfig
from heronsfl.engines.simulation import Simulation
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


def run_experiment(
    cfg: RunConfig,
    out_dir: str | Path | None,
    overwrite: bool = False,
    on_round: ProgressFn | None = None,
    progress: RoundProgress | None = None,
) -> dict[str, Any]:
    """Run `cfg`; with `out_dir`, write config.toml, metrics.jsonl and (last) summary.json."""
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    writer = RunWriter(out_dir, cfg, overwrite) if out_dir is not None else None
    records: list[dict[str, Any]] = []
    try:
        sim = Simulation(cfg)
        if progress is not None:
            sim.progress = progress
        if writer is not None and writer.checkpoint is not None:
            writer.restore(sim)
            records = list(writer.records)
            log.warning("resuming %s after round %d", writer.dir, sim.round)
        # wall_s keeps counting across a resume: time already spent, plus this process's.
        t0 = time.perf_counter() - (records[-1]["wall_s"] if records else 0.0)
        keep = writer is not None and cfg.privacy.keep_client_rounds
        if writer is not None and keep and sim.round == 0:
            writer.save_client_round(0, sim.client_snapshot())
        stopped = None
        while sim.round < cfg.rounds:
            record = sim.run_round()
            record["wall_s"] = time.perf_counter() - t0
            records.append(record)
            if writer is not None:
                writer.log(record)
                writer.save_checkpoint(sim.state_dict())
                if keep:  # the attack's per-round targets (privacy.keep_client_rounds)
                    writer.save_client_round(sim.round, sim.client_snapshot())
            if on_round is not None:
                on_round(record)
            sent = record["comm/uplink_bytes"] + record["comm/downlink_bytes"]
            if cfg.train.max_comm_bytes and sent >= cfg.train.max_comm_bytes:
                stopped = f"communication budget: {sent} >= train.max_comm_bytes"
                log.warning("stopping after round %d: %s", sim.round, stopped)
                break
        summary = summarize(cfg, records, time.perf_counter() - t0)
        summary["stopped_early"] = stopped
        if sim.task.final_metrics is not None:  # e.g. E2E generation scores
            summary["final_metrics"] = sim.task.final_metrics(sim)

        if writer is not None:
            writer.finish(summary)
        return summary

    finally:
        if writer is not None:
            writer.close()
