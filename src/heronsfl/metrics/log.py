"""The run directory: config.toml, metrics.jsonl (one JSON object per round), checkpoint.pt and,
last, summary.json.

summary.json is written atomically once every round completed: its presence is what marks a run
as complete. checkpoint.pt is rewritten atomically after every completed round, so a run killed
at any point (even kill -9) restarts from its last completed round when the same command is
given again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import IO, Any

from heronsfl import files
from heronsfl.config import RunConfig, to_toml
from heronsfl.errors import UserError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
SUMMARY_FILE = "summary.json"
CLIENT_ROUNDS_DIR = "client_rounds"  # privacy.keep_client_rounds: round_0003.pt, ...


def client_round_path(run_dir: str | Path, round_idx: int) -> Path:
    return Path(run_dir) / CLIENT_ROUNDS_DIR / f"round_{round_idx:04d}.pt"


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run directory's metrics.jsonl (see heronsfl.files.read_metrics)."""
    return files.read_metrics(Path(run_dir) / METRICS_FILE)


class RunWriter:
    """Owns one run directory for the duration of a run; resumes an unfinished one.

    After construction, `checkpoint` is the state to resume from (None for a fresh run) and
    `records` the metrics of the rounds it covers. Construction only reads and checks: nothing
    is written until the first round is logged (or a checkpoint saved), so a run that fails
    before that (wrong data root, no GPU, a NaN in round 1) leaves `out_dir` as it found it.

    On resume the checkpoint is the source of truth: the metrics of the rounds it covers are
    kept, a line after it is dropped, and a truncated last line (a kill while writing) is
    dropped with a warning. What cannot be trusted (a damaged checkpoint, a missing config or
    metrics file, rounds the checkpoint covers but the metrics lack) is refused with the fix.
    """

    def __init__(self, out_dir: str | Path, cfg: RunConfig, overwrite: bool = False) -> None:
        self.dir = files.check_out_dir(out_dir)
        self.cfg = cfg
        self.overwrite = overwrite
        self.checkpoint: dict[str, Any] | None = None
        self.records: list[dict[str, Any]] = []
        self._metrics: IO[str] | None = None
        if not overwrite:
            if (self.dir / SUMMARY_FILE).exists():
                raise UserError(
                    f"{self.dir} already holds a completed run; "
                    "choose another --out or pass --overwrite"
                )
            self._try_resume(cfg)

    def _open(self) -> None:
        """First write: the directory, config.toml and the metrics of the rounds resumed."""
        if self._metrics is not None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / SUMMARY_FILE).unlink(missing_ok=True)
        if self.checkpoint is None:
            (self.dir / CHECKPOINT_FILE).unlink(missing_ok=True)
            shutil.rmtree(self.dir / CLIENT_ROUNDS_DIR, ignore_errors=True)
        (self.dir / CONFIG_FILE).write_text(to_toml(self.cfg))
        # Rewrite the metrics of the completed rounds (drops a line logged after the last
        # checkpoint), then append.
        self._metrics = open(self.dir / METRICS_FILE, "w")  # noqa: SIM115 - closed in close()
        for record in self.records:
            self._write(record)

    def _try_resume(self, cfg: RunConfig) -> None:
        ckpt = self.dir / CHECKPOINT_FILE
        if not ckpt.exists():
            return
        from heronsfl.registry import load_config  # here: `heronsfl report` needs no torch

        fix = "pass --overwrite to start over, or choose another --out"
        if not (self.dir / CONFIG_FILE).is_file():
            raise UserError(
                f"{self.dir} has {CHECKPOINT_FILE} but no {CONFIG_FILE}, so it cannot tell "
                f"which config the checkpoint belongs to; {fix}"
            )
        try:
            same = load_config(self.dir / CONFIG_FILE) == cfg
        except UserError as e:
            raise UserError(f"cannot resume {self.dir}: {CONFIG_FILE}: {e}; {fix}") from None
        if not same:
            raise UserError(f"{self.dir} holds an unfinished run of another config; {fix}")
        self.checkpoint = files.read_checkpoint(ckpt)
        done = self.checkpoint["round"]
        metrics = self.dir / METRICS_FILE
        if not metrics.is_file():
            if done:
                raise UserError(
                    f"{self.dir} has a checkpoint after round {done} but no {METRICS_FILE}: "
                    f"the metrics of those rounds are lost; {fix}"
                )
            return
        records = files.read_metrics(metrics)
        dropped = [r["round"] for r in records if r["round"] > done]
        if dropped:
            log.warning(
                "%s: dropped the metrics of round(s) %s, logged after the last checkpoint "
                "(round %d); they are run again",
                metrics,
                ", ".join(map(str, dropped)),
                done,
            )
        self.records = [r for r in records if r["round"] <= done]
        if [r["round"] for r in self.records] != list(range(1, done + 1)):
            have = len(self.records)
            raise UserError(
                f"{metrics} holds {have} of the {done} rounds {CHECKPOINT_FILE} covers: "
                f"the run cannot continue from it; {fix}"
            )

    def restore(self, sim: Any) -> None:
        """Load the checkpoint into `sim` (an engine with `load_state_dict`), or say why not."""
        assert self.checkpoint is not None, "restore() is for a resumed run"
        try:
            sim.load_state_dict(self.checkpoint)
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(
                f"{self.dir / CHECKPOINT_FILE} does not fit this run ({first[:200]}): it is "
                "damaged or from another version; pass --overwrite to start over"
            ) from None

    def _write(self, record: dict[str, Any]) -> None:
        assert self._metrics is not None, "opened before writing"
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()

    def log(self, record: dict[str, Any]) -> None:
        self._open()
        self._write(record)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        import torch

        self._open()
        tmp = self.dir / (CHECKPOINT_FILE + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.dir / CHECKPOINT_FILE)

    def save_client_round(self, round_idx: int, state: dict[str, Any]) -> None:
        """The global client sub-model after `round_idx` (0 = its initialisation)."""
        import torch

        self._open()  # before the snapshot: opening a fresh run clears stale ones
        path = client_round_path(self.dir, round_idx)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def finish(self, summary: dict[str, Any]) -> None:
        self._open()  # a resumed run whose last round was checkpointed logs nothing new
        self.close()
        write_json_atomic(self.dir / SUMMARY_FILE, summary)

    def close(self) -> None:
        if self._metrics is not None and not self._metrics.closed:
            self._metrics.close()
