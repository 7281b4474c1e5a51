"""The run directory: config.toml, metrics.jsonl (one JSON object per round), summary.json.

summary.json is written last and atomically, only when every round completed: its presence is
what marks a run as complete. A failed or interrupted run leaves metrics.jsonl without it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from heronsfl.config import RunConfig, to_toml
from heronsfl.errors import UserError

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


class RunWriter:
    """Owns one run directory for the duration of a run."""

    def __init__(self, out_dir: str | Path, cfg: RunConfig, overwrite: bool = False) -> None:
        self.dir = Path(out_dir)
        if (self.dir / SUMMARY_FILE).exists() and not overwrite:
            raise UserError(
                f"{self.dir} already holds a completed run; "
                "choose another --out or pass --overwrite"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / SUMMARY_FILE).unlink(missing_ok=True)
        (self.dir / CONFIG_FILE).write_text(to_toml(cfg))
        self._metrics = open(self.dir / METRICS_FILE, "w")  # noqa: SIM115 - closed in finish/close

    def log(self, record: dict[str, Any]) -> None:
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        self.close()
        write_json_atomic(self.dir / SUMMARY_FILE, summary)

    def close(self) -> None:
        if not self._metrics.closed:
            self._metrics.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
