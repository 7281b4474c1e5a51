"""The run directory: config.toml, metrics.jsonl (one JSON object per round), checkpoint.pt and,
last, summary.json.

summary.json is written atomically once every round completed: its presence is what marks a run
as complete. checkpoint.pt is rewritten atomically after every completed round, so a run killed
at any point (even kill -9) restarts from its last completed round when the same command is
given again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from heronsfl.config import RunConfig, load_config, to_toml
from heronsfl.errors import UserError

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
SUMMARY_FILE = "summary.json"


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunWriter:
    """Owns one run directory for the duration of a run; resumes an unfinished one.

    After construction, `checkpoint` is the state to resume from (None for a fresh run) and
    `records` the metrics of the rounds it covers.
    """

    def __init__(self, out_dir: str | Path, cfg: RunConfig, overwrite: bool = False) -> None:
        self.dir = Path(out_dir)
        self.checkpoint: dict[str, Any] | None = None
        self.records: list[dict[str, Any]] = []
        if not overwrite:
            if (self.dir / SUMMARY_FILE).exists():
                raise UserError(
                    f"{self.dir} already holds a completed run; "
                    "choose another --out or pass --overwrite"
                )
            self._try_resume(cfg)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / SUMMARY_FILE).unlink(missing_ok=True)
        if self.checkpoint is None:
            (self.dir / CHECKPOINT_FILE).unlink(missing_ok=True)
        (self.dir / CONFIG_FILE).write_text(to_toml(cfg))
        # Rewrite the metrics of the completed rounds (drops a line logged after the last
        # checkpoint), then append.
        self._metrics = open(self.dir / METRICS_FILE, "w")  # noqa: SIM115 - closed in close()
        for record in self.records:
            self.log(record)

    def _try_resume(self, cfg: RunConfig) -> None:
        ckpt = self.dir / CHECKPOINT_FILE
        if not ckpt.exists():
            return
        if load_config(self.dir / CONFIG_FILE) != cfg:
            raise UserError(
                f"{self.dir} holds an unfinished run of another config; "
                "pass --overwrite to start over, or choose another --out"
            )
        import torch  # here, not at import: `heronsfl report` reads run dirs without torch

        try:
            # weights_only: tensors, numbers, strings and containers; nothing is unpickled.
            self.checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as e:  # a torn or foreign file: say so rather than guess
            raise UserError(
                f"{ckpt} is unreadable ({type(e).__name__}); pass --overwrite to start over"
            ) from None
        done = int(self.checkpoint["round"])
        self.records = [r for r in read_metrics(self.dir) if r["round"] <= done]
        if len(self.records) != done:
            raise UserError(
                f"{self.dir / METRICS_FILE} lacks rounds the checkpoint covers; "
                "pass --overwrite to start over"
            )

    def log(self, record: dict[str, Any]) -> None:
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        import torch

        tmp = self.dir / (CHECKPOINT_FILE + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.dir / CHECKPOINT_FILE)

    def finish(self, summary: dict[str, Any]) -> None:
        self.close()
        write_json_atomic(self.dir / SUMMARY_FILE, summary)

    def close(self) -> None:
        if not self._metrics.closed:
            self._metrics.close()
