"""Property: malformed input ends with one `heronsfl: error:` line naming the key or file.

Hypothesis generates malformed config files, overrides, bench flags and damaged run
directories; every case must exit with status 2, print no traceback, write no summary.json,
leave the folders it was given as it found them, and name what is wrong. The CLI runs in this
process (`heronsfl.cli.main`), so each example costs milliseconds; the seed is fixed
(`derandomize`) and the number of examples bounded, so the file runs in seconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from heronsfl.cli import main
from heronsfl.config import RunConfig, _hints, describe_fields
from heronsfl.files import CHECKPOINT_KEYS
from tests.conftest import TINY

PROPERTY = settings(
    derandomize=True,  # a fixed seed: the same examples every run
    database=None,
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
BASE = [*TINY, "rounds=1"]  # should a case wrongly pass, it runs for seconds, not minutes
# The run whose directory is damaged: 2 rounds (two metrics lines), as little work as possible.
RUN = [*TINY, "train.local_steps=2", "data.test_subset=32"]


def cli(*argv: str) -> tuple[int, str]:
    """Run the CLI in-process; (exit status, stderr)."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse's own usage errors
            code = int(e.code or 0)
    return code, err.getvalue()


def assert_clean_error(code: int, err: str, *names: str) -> str:
    """Exit 2, no traceback, one error line that names one of `names`; returns the line."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("heronsfl: error:")]
    assert len(lines) == 1, err
    message = err[err.index("heronsfl: error:") :]
    # A name may be shown as its repr (non-printable characters escaped).
    assert any(n in message or repr(n)[1:-1] in message for n in names), (names, message)
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- configs


def _leaves() -> dict[str, Any]:
    """Every config key (dotted) and its type."""
    out: dict[str, Any] = {}

    def walk(cls: type, prefix: str) -> None:
        for name, typ in _hints(cls).items():
            if hasattr(typ, "__dataclass_fields__"):
                walk(typ, f"{prefix}{name}.")
            else:
                out[f"{prefix}{name}"] = typ

    walk(RunConfig, "")
    return out


LEAVES = _leaves()
CHECKS = {}
for key, _, _ in describe_fields():
    *parents, leaf = key.split(".")
    cls: Any = RunConfig
    for part in parents:
        cls = _hints(cls)[part]
    CHECKS[key] = cls.__dataclass_fields__[leaf].metadata.get("check")
NAMED = {"algorithm", "task", "data.partition", "model.cut"}  # strings that must name something


def _out_of_range(check: str | None, integer: bool = True) -> st.SearchStrategy[Any]:
    """Numbers outside `check` (see config._f); integers past 64 bits for an int field."""
    beyond = st.sampled_from([2**63, -(2**63) - 5, 10**30] if integer else [-math.inf])
    if check == ">0":
        return st.one_of(beyond, st.integers(max_value=0))
    if check == ">=0":
        return st.one_of(beyond, st.integers(max_value=-1))
    if check and check.startswith(("[", "(")):
        lo_s, hi_s = check[1:-1].split(",")
        lo, hi = float(lo_s), float(hi_s)
        below = st.just(int(math.floor(lo)) - 1) if check[0] == "[" else st.just(lo)
        options = [beyond, below]
        if math.isfinite(hi):
            options.append(st.just(hi + 1 if check[-1] == "]" else hi))
        return st.one_of(*options)
    return beyond


@st.composite
def bad_assignment(draw: st.DrawFn) -> tuple[str, Any]:
    """(dotted key, TOML value) that no valid config has."""
    key = draw(st.sampled_from(sorted(LEAVES)))
    typ = LEAVES[key]
    text = st.text(min_size=1, max_size=12).filter(lambda s: s.strip() and "\x00" not in s)
    if get_origin(typ) is not None and get_args(typ) and isinstance(get_args(typ)[0], str):
        allowed = get_args(typ)
        value = draw(st.one_of(text.filter(lambda s: s not in allowed), st.integers()))
    elif typ is bool:
        value = draw(
            st.one_of(st.integers(), text.filter(lambda s: s.lower() not in ("true", "false")))
        )
    elif typ is int:
        value = draw(
            st.one_of(
                _out_of_range(CHECKS[key]),
                st.sampled_from([math.nan, math.inf, 1.5, True, [1], "12abc"]),
            )
        )
    elif typ is float:
        value = draw(
            st.one_of(
                st.sampled_from([math.nan, math.inf, -math.inf, "fast", False, [0.1]]),
                _out_of_range(CHECKS[key], integer=False),
            )
        )
    elif key in NAMED:
        value = draw(st.one_of(text.map(lambda s: "no such " + s), st.integers(), st.booleans()))
    else:  # free-form strings: only the wrong type is wrong
        value = draw(st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans()))
    return key, value


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return (
            "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        )
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(map(toml_value, v)) + "]"
    return json.dumps(v)


def override_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return toml_value(v)
    return str(v)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


@PROPERTY
@given(bad=bad_assignment(), unknown=st.booleans())
def test_malformed_config_files_end_in_one_clear_line(
    scratch: Path, bad: tuple[str, Any], unknown: bool
) -> None:
    # Prepare: a config file with one bad value (or an unknown key) beside valid ones.
    key, value = bad
    if unknown:
        key = key.replace(".", ".x_") if "." in key else f"x_{key}"
    section, _, leaf = key.rpartition(".")
    line = f"{leaf} = {toml_value(value)}"
    cfg = scratch / "bad.toml"
    cfg.write_text(f"[{section}]\n{line}\n" if section else f"{line}\n")
    out = Path(tempfile.mkdtemp(dir=scratch)) / "out"
    # Execute
    code, err = cli("run", str(cfg), "--out", str(out), "-q")
    # Assert: the key is named (or the file, where TOML itself rejects the value)
    assert_clean_error(code, err, key, str(cfg))
    assert not out.exists()


@PROPERTY
@given(bad=bad_assignment())
def test_malformed_overrides_end_in_one_clear_line(scratch: Path, bad: tuple[str, Any]) -> None:
    key, value = bad
    # On the command line every value is text: a free-form string field takes any of them.
    assume(LEAVES[key] is not str or key in NAMED)
    out = Path(tempfile.mkdtemp(dir=scratch)) / "out"
    code, err = cli("run", *BASE, f"{key}={override_text(value)}", "--out", str(out), "-q")
    assert_clean_error(code, err, key)
    assert not out.exists()


@PROPERTY
@given(
    arg=st.one_of(
        st.text(min_size=1, max_size=10)
        .filter(lambda s: "=" not in s and s.strip() and s.strip() not in LEAVES)
        .map(lambda s: f"{s}=x.toml"),
        st.sampled_from(["=3", "rounds", "train.local_steps", ".=1", "a=b.toml", "train=1"]),
    )
)
def test_malformed_arguments_end_in_one_clear_line(scratch: Path, arg: str) -> None:
    out = Path(tempfile.mkdtemp(dir=scratch)) / "out"
    code, err = cli("run", *BASE, arg, "--out", str(out), "-q")
    assert_clean_error(code, err, arg, arg.split("=")[0].strip() or arg)
    assert not out.exists()


@PROPERTY
@given(data=st.binary(min_size=1, max_size=64))
def test_config_files_that_are_not_toml_or_utf8(scratch: Path, data: bytes) -> None:
    cfg = scratch / "garbage.toml"
    cfg.write_bytes(b"\xff" + data if data[0] % 2 else b"[[[" + data)
    code, err = cli("validate", str(cfg))
    assert_clean_error(code, err, str(cfg))


# ----------------------------------------------------------------------------- bench flags


@st.composite
def bad_bench_flags(draw: st.DrawFn) -> tuple[list[str], str]:
    """Bench flags with one problem, and the flag the error must name."""
    flags = {"--task": "cnn-digits", "--local-steps": "4", "--upload-every": "2"}
    which = draw(
        st.sampled_from(
            ["--batch-size", "--local-steps", "--upload-every", "--algorithms", "--task", "k>h"]
        )
    )
    if which == "--batch-size":
        flags[which] = str(draw(st.one_of(st.integers(max_value=0), st.integers(10**11, 2**70))))
    elif which == "--local-steps":
        flags[which] = str(draw(st.one_of(st.integers(max_value=0), st.integers(10**5 + 1, 2**70))))
        if int(flags[which]) > 0:
            flags["--upload-every"] = "1"
    elif which == "--upload-every":
        flags[which] = str(draw(st.integers(max_value=0)))
    elif which == "k>h":
        h = draw(st.integers(1, 100))
        flags["--local-steps"], flags["--upload-every"] = str(h), str(h + draw(st.integers(1, 9)))
        which = "--upload-every"
    elif which == "--algorithms":
        flags[which] = draw(
            st.one_of(
                st.sampled_from([",,,", "", " , ", "heron-sfl,,sflv2"]),
                st.text(min_size=1, max_size=8)
                .filter(lambda s: s.strip() and "," not in s)
                .map(lambda s: f"no-{s.strip()}"),
            )
        )
    else:
        flags[which] = draw(st.text(min_size=1, max_size=8).map(lambda s: f"no-{s}"))
    argv = [part for k, v in flags.items() for part in (k, v)]
    return argv, which


@PROPERTY
@given(case=bad_bench_flags())
def test_malformed_bench_flags_end_in_one_clear_line(case: tuple[list[str], str]) -> None:
    argv, flag = case
    code, err = cli("bench", "resources", *argv)
    assert_clean_error(code, err, flag)


# ----------------------------------------------------------------------------- run dirs


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-round TINY run; its summary.json is kept here and removed per case as needed."""
    out = tmp_path_factory.mktemp("template") / "run"
    code, err = cli("run", *RUN, "--out", str(out), "-q")
    assert code == 0, err
    return out


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _is_json(b: bytes) -> bool:
    try:
        json.loads(b)
    except ValueError:
        return False
    return True


BAD_LINE = st.one_of(
    st.binary(max_size=24).map(lambda b: b"\xff" + b.replace(b"\n", b"")),
    st.text(max_size=24)
    .map(lambda t: ("{" + t).replace("\n", "").replace("\r", "").encode())
    .filter(lambda b: not _is_json(b)),
    st.sampled_from(
        [b"[1, 2]", b"3", b"{}", b'{"round": "1"}', b'{"round": 0}', b'{"round": 1, "wall_s": "x"}']
    ),
)


@st.composite
def damage(draw: st.DrawFn) -> tuple[str, Any]:
    """A way to damage a run directory beyond repair, and the file it concerns."""
    kind = draw(
        st.sampled_from(
            [
                "ckpt-bytes",
                "ckpt-truncate",
                "ckpt-drop-key",
                "ckpt-bad-type",
                "ckpt-ahead",
                "metrics-missing",
                "metrics-bad-line",
                "metrics-drop-round",
                "metrics-swap",
                "config-missing",
                "config-garbage",
            ]
        )
    )
    if kind == "ckpt-bytes":
        return kind, draw(st.binary(max_size=64))
    if kind == "ckpt-truncate":
        return kind, draw(st.floats(0.0, 0.99))
    if kind in ("ckpt-drop-key", "ckpt-bad-type"):
        return kind, draw(st.sampled_from(sorted(CHECKPOINT_KEYS)))
    if kind == "metrics-bad-line":
        return kind, draw(BAD_LINE)
    if kind == "config-garbage":
        return kind, draw(st.binary(max_size=32).map(lambda b: b"[[[" + b))
    return kind, None


def apply_damage(run: Path, kind: str, arg: Any) -> str:
    """Damage `run` in place; returns the name of the damaged file."""
    ckpt, metrics, config = run / "checkpoint.pt", run / "metrics.jsonl", run / "config.toml"
    if kind == "ckpt-bytes":
        ckpt.write_bytes(arg)
    elif kind == "ckpt-truncate":
        data = ckpt.read_bytes()
        ckpt.write_bytes(data[: int(len(data) * arg)])
    elif kind in ("ckpt-drop-key", "ckpt-bad-type", "ckpt-ahead"):
        state = torch.load(ckpt, weights_only=True)
        if kind == "ckpt-drop-key":
            del state[arg]
        elif kind == "ckpt-bad-type":
            state[arg] = "not this"
        else:
            state["round"] = 5  # ahead of the metrics
        torch.save(state, ckpt)
    elif kind == "metrics-missing":
        metrics.unlink()
    elif kind == "metrics-bad-line":
        lines = _lines(metrics)
        metrics.write_bytes(arg + b"\n" + b"".join(lines[1:]))  # round 1 replaced, newline kept
    elif kind == "metrics-drop-round":
        metrics.write_bytes(b"".join(_lines(metrics)[1:]))
    elif kind == "metrics-swap":
        lines = _lines(metrics)
        metrics.write_bytes(lines[1] + lines[0])
    elif kind == "config-missing":
        config.unlink()
    elif kind == "config-garbage":
        config.write_bytes(arg)
    return {"ckpt": "checkpoint.pt", "metr": "metrics.jsonl", "conf": "config.toml"}[kind[:4]]


@PROPERTY
@given(case=damage())
def test_resuming_a_damaged_run_directory_is_refused_clearly(
    finished_run: Path, scratch: Path, case: tuple[str, Any]
) -> None:
    # Prepare: an unfinished copy (no summary.json), damaged.
    run = scratch / "resume"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(finished_run, run)
    (run / "summary.json").unlink()
    name = apply_damage(run, *case)
    before = snapshot(run)
    # Execute: the command that would resume it.
    code, err = cli("run", *RUN, "--out", str(run), "-q")
    # Assert
    assert_clean_error(code, err, name)
    assert not (run / "summary.json").exists()
    assert snapshot(run) == before, "a refused resume must leave the folder as it was"


@st.composite
def report_damage(draw: st.DrawFn) -> tuple[str, bytes]:
    """(file, new content) that `heronsfl report` must refuse."""
    name = draw(st.sampled_from(["metrics.jsonl", "summary.json", "config.toml"]))
    if name == "metrics.jsonl":
        return name, draw(BAD_LINE)
    if name == "summary.json":
        return name, draw(
            st.one_of(
                st.binary(max_size=24).map(lambda b: b"\xff" + b),
                st.text(max_size=24)
                .map(lambda t: ("{" + t).encode())
                .filter(lambda b: not _is_json(b)),
                st.sampled_from(
                    [b"[]", b"1", b'{"final": 3}', b'{"wall_s": "slow"}', b'{"final": {}}']
                ),
            )
        )
    return name, draw(st.binary(max_size=24).map(lambda b: b"[[[" + b))


@PROPERTY
@given(case=report_damage())
def test_report_on_a_damaged_run_directory_is_refused_clearly(
    finished_run: Path, scratch: Path, case: tuple[str, bytes]
) -> None:
    run, out = scratch / "report-run", scratch / "report-out"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(finished_run, run)
    name, content = case
    if name == "metrics.jsonl":  # the first of two lines: not a truncated last line
        content += b"\n" + b"".join(_lines(run / name)[1:])
    (run / name).write_bytes(content)
    code, err = cli("report", str(run), "--out", str(out))
    assert_clean_error(code, err, name)
    assert not out.exists(), "a failed report writes nothing"
