"""Every file a user hands heronsfl is read here, and every way it can be wrong becomes a UserError.

A config file, a sweep grid, a run directory (config.toml, metrics.jsonl, summary.json,
checkpoint.pt) and an output folder (`--out`) can each be missing, a directory, unreadable, not
UTF-8, not valid TOML/JSON, or the right syntax with the wrong shape. Callers get plain Python
values or one `UserError` that names the file, what is wrong and what to do: they never see
`UnicodeDecodeError`, `JSONDecodeError`, `KeyError` or `NotADirectoryError`.
"""

from __future__ import annotations

import json
import logging
import os
import tomllib
from pathlib import Path
from typing import Any

from heronsfl.errors import UserError

log = logging.getLogger(__name__)


def read_text(path: str | Path, what: str = "file") -> str:
    """The file's text as UTF-8; a UserError says why it cannot be read."""
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} {str(path)!r} is a directory, not a file") from None
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); "
            f"give a UTF-8 {what} (TOML and JSON files are UTF-8)"
        ) from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file as a dict (UTF-8, valid syntax)."""
    try:
        return tomllib.loads(read_text(path, what))
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: invalid TOML ({e}); fix the file's syntax") from None


def read_json(path: str | Path, what: str = "JSON file") -> dict[str, Any]:
    """A JSON file holding one object."""
    try:
        data = json.loads(read_text(path, what))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}): the file is corrupt") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds a JSON {type(data).__name__}, not an object: it is corrupt")
    return data


METRIC_PREFIXES = ("test/", "aux/", "train/", "comm/", "client/", "flower/")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_record(record: Any, where: str) -> dict[str, Any]:
    """One metrics record: an object with an integer `round` >= 1 and numbers for metrics."""
    if not isinstance(record, dict):
        raise UserError(f"{where} is a JSON {type(record).__name__}, not an object")
    rnd = record.get("round")
    if not isinstance(rnd, int) or isinstance(rnd, bool) or rnd < 1:
        raise UserError(f"{where} has no integer 'round' >= 1 (got {rnd!r})")
    for key, value in record.items():
        # Metrics (what report plots and tabulates) are numbers; other keys are left alone.
        if key.startswith(METRIC_PREFIXES) or key in ("wall_s", "round_s"):
            if not _number(value):
                raise UserError(f"{where}: {key!r} = {value!r} is not a number")
    return record


def read_metrics(path: str | Path, drop_truncated_last: bool = True) -> list[dict[str, Any]]:
    """Every record of a metrics.jsonl, in order (rounds strictly increasing).

    A run killed while writing leaves a partial last line: with `drop_truncated_last` it is
    dropped with a warning that says so; a bad line anywhere else means the file is corrupt.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    lines = [(i + 1, line) for i, line in enumerate(raw.split(b"\n")) if line.strip()]
    records: list[dict[str, Any]] = []
    for n, (lineno, line) in enumerate(lines):
        where = f"{path}, line {lineno}"
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if drop_truncated_last and n == len(lines) - 1 and not raw.endswith(b"\n"):
                log.warning(
                    "%s: dropped a truncated last line (a run killed while writing it)", where
                )
                break
            raise UserError(f"{where} is not a JSON record ({e}): the file is corrupt") from None
        record = check_record(record, where)
        if records and record["round"] <= records[-1]["round"]:
            raise UserError(
                f"{where}: round {record['round']} follows round {records[-1]['round']}: "
                "the file is corrupt"
            )
        records.append(record)
    return records


def read_summary(path: str | Path) -> dict[str, Any]:
    """summary.json of a finished run (see runner.summarize)."""
    data = read_json(path, "run summary")
    final = data.get("final")
    if final is not None:
        check_record(final, f"{path}: 'final'")
    for key in ("wall_s", "best_test_accuracy"):
        if data.get(key) is not None and not _number(data[key]):
            raise UserError(f"{path}: {key!r} = {data[key]!r} is not a number: the file is corrupt")
    if data.get("stopped_early") is not None and not isinstance(data["stopped_early"], str):
        raise UserError(f"{path}: 'stopped_early' must be a string or null: the file is corrupt")
    return data


# What `Simulation.state_dict()` holds, and the type each entry must have.
CHECKPOINT_KEYS: dict[str, tuple[type, ...]] = {
    "round": (int,),
    "global_state": (dict,),
    "server_model": (dict,),
    "server_optimizer": (dict, type(None)),
    "comm": (dict,),
    "server_extra": (dict,),
    "step_cost": (dict, type(None)),
}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint.pt written by `RunWriter.save_checkpoint`, with every key it must hold."""
    import torch  # here: reading configs and metrics must not need torch

    path = Path(path)
    fix = "pass --overwrite to start over"
    try:
        # weights_only: tensors, numbers, strings and containers; nothing is unpickled.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: say so rather than guess
        raise UserError(f"{path} is unreadable ({type(e).__name__}); {fix}") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{path} holds a {type(ckpt).__name__}, not a heronsfl checkpoint; {fix}")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise UserError(f"{path} lacks {', '.join(map(repr, missing))}: it is damaged; {fix}")
    for key, types in CHECKPOINT_KEYS.items():
        if not isinstance(ckpt[key], types) or isinstance(ckpt[key], bool):
            raise UserError(f"{path}: {key!r} has the wrong type: it is damaged; {fix}")
    if ckpt["round"] < 0:
        raise UserError(f"{path}: round {ckpt['round']} < 0: it is damaged; {fix}")
    return ckpt


def check_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """Refuse an output folder that cannot be one, before any work starts; creates nothing.

    It must be a directory or not exist yet, and the deepest part of it that exists must be
    a writable directory (so that `mkdir -p` and writing files will succeed).
    """
    out = Path(path)
    if not str(path).strip():
        raise UserError(f"{flag} is empty: give a directory")
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {str(out)!r} is an existing file, not a directory: choose another")
    probe = out
    while not probe.exists():
        if probe.is_symlink():  # a dangling link: mkdir would fail on it
            raise UserError(f"{flag} {str(out)!r}: {probe} is a broken symbolic link")
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(
            f"{flag} {str(out)!r} cannot be created: {probe} is a file, not a directory"
        )
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {str(out)!r} cannot be written: no permission in {probe}")
    return out
