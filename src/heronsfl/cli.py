"""`heronsfl run | bench | demo | validate | ls` (and report | sweep | deploy | attack).

User errors (bad config, missing data, divergence) end with one `heronsfl: error: ...` line and
exit status 2, never a traceback. So does running out of memory (the line names the size that
could not be allocated), and a reader that closes the pipe (`heronsfl ls | head -1`) ends the
command quietly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from heronsfl import __version__
from heronsfl.errors import UserError

log = logging.getLogger("heronsfl")


def _interactive() -> bool:
    """Progress bars on a terminal; quiet (warnings only) in CI."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def _fmt_record(r: dict[str, Any]) -> str:
    parts = [f"round {r['round']}"]
    if "test/accuracy" in r:
        parts.append(f"acc {r['test/accuracy']:.4f}")
    if "aux/accuracy" in r:
        parts.append(f"aux {r['aux/accuracy']:.4f}")
    if "train/server_loss" in r:
        parts.append(f"server loss {r['train/server_loss']:.4f}")
    parts.append(f"up {r['comm/uplink_bytes'] / 1e6:.1f} MB")
    parts.append(f"{r['wall_s']:.1f} s")
    return " | ".join(parts)


# A round of the paper preset: 5 clients x 39 local steps. A round 100 times that is announced
# before it starts, with what it holds, so that a typo (local_steps=39000) is seen at once.
PAPER_ROUND_STEPS = 5 * 39


def announce_cost(cfg: Any) -> None:
    """Warn before the first round when one round holds far more work than the paper's."""
    from heronsfl.algorithms import ALGORITHMS

    t = cfg.train
    clients = t.clients_per_round or max(1, round(t.client_fraction * cfg.clients))
    steps = clients * t.local_steps
    probes = cfg.zo.num_probes if ALGORITHMS[cfg.algorithm].zeroth_order_client else 1
    if steps * probes > 100 * PAPER_ROUND_STEPS:
        log.warning(
            "each round runs %d clients x %d local steps = %s client steps%s (the paper's "
            "round: %d); progress is shown within the round, Ctrl-C stops and the same "
            "command resumes after the last finished round",
            clients,
            t.local_steps,
            f"{steps:,}",
            f" of {probes} ZO probes each" if probes > 1 else "",
            PAPER_ROUND_STEPS,
        )


def round_progress(quiet: bool) -> Any:
    """A display of progress within a round: a bar on a terminal, a periodic line otherwise."""
    from heronsfl.progress import LogProgress, RoundProgress, TerminalProgress

    if quiet:
        return RoundProgress()
    return TerminalProgress() if _interactive() else LogProgress(every_s=30.0)


def cmd_run(ns: argparse.Namespace) -> int:
    from heronsfl.config import split_config_args
    from heronsfl.files import check_out_dir
    from heronsfl.registry import load_config
    from heronsfl.runner import run_experiment

    if ns.out is not None:
        check_out_dir(ns.out)
    path, overrides = split_config_args(ns.args)
    cfg = load_config(path, overrides)
    out = ns.out or f"runs/{cfg.algorithm}-{cfg.task}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_out_dir(out)
    announce_cost(cfg)
    bar = None
    if _interactive() and not ns.quiet:
        from tqdm import tqdm

        bar = tqdm(total=cfg.rounds, desc=f"{cfg.algorithm} on {cfg.task}", unit="round")

    def on_round(r: dict[str, Any]) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(_fmt_record(r).split(" | ", 1)[-1])
        elif not ns.quiet and not os.environ.get("CI"):
            log.info(_fmt_record(r))

    try:
        summary = run_experiment(
            cfg, out, overwrite=ns.overwrite, on_round=on_round, progress=round_progress(ns.quiet)
        )
    finally:
        if bar is not None:
            bar.close()
    final = summary["final"]
    acc = final.get("test/accuracy")
    log.warning(
        "done: %s rounds, test accuracy %s, results in %s",
        summary["rounds"],
        "n/a" if acc is None else f"{acc:.4f}",
        out,
    )
    return 0


def cmd_validate(ns: argparse.Namespace) -> int:
    from heronsfl.config import split_config_args
    from heronsfl.registry import load_config

    path, overrides = split_config_args([ns.config, *ns.overrides])
    cfg = load_config(path, overrides)
    print(
        f"{ns.config}: ok ({cfg.algorithm} on {cfg.task}, "
        f"{cfg.rounds} rounds, {cfg.clients} clients)"
    )
    return 0


def cmd_ls(ns: argparse.Namespace) -> int:
    from heronsfl.algorithms import ALGORITHMS, config_sections
    from heronsfl.config import describe_fields, presets
    from heronsfl.data.partition import PARTITIONERS
    from heronsfl.tasks import TASKS

    if ns.keys:
        for key, default, help_text in describe_fields(sections=config_sections()):
            print(f"{key} = {default}\n    {help_text}")
        return 0
    print("algorithms:")
    for name, cls in ALGORITHMS.items():
        print(f"  {name:<12} {cls.summary}")
    print("tasks:")
    for name, task in TASKS.items():
        print(f"  {name:<18} {task.description}")
        print(f"  {'':<18} cuts: {', '.join(task.cuts)} (paper: {task.paper_cut})")
    print("partitions:")
    print("  " + ", ".join(PARTITIONERS))
    print("presets (heronsfl run NAME or configs/NAME.toml):")
    for name in presets():
        print(f"  {name}")
    print("config keys: heronsfl ls --keys")
    return 0


def cmd_bench(ns: argparse.Namespace) -> int:
    from heronsfl.bench import check_flags, format_table, resources

    algorithms = None if ns.algorithms is None else [a.strip() for a in ns.algorithms.split(",")]
    check_flags(ns.task, ns.batch_size, algorithms, ns.upload_every, ns.local_steps)
    rows = resources(
        ns.task,
        batch_size=ns.batch_size,
        algorithms=algorithms,
        device=ns.device,
        upload_every=ns.upload_every,
        local_steps=ns.local_steps,
        overrides=ns.overrides,
        zo_options=ns.zo_options,
    )
    if ns.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
    return 0


def cmd_bench_stream(ns: argparse.Namespace) -> int:
    try:
        from heronsfl.engines.stream.bench import format_table, run
    except ModuleNotFoundError as e:
        if e.name is None or e.name.startswith("heronsfl"):
            raise
        raise UserError(
            f"heronsfl bench stream needs {e.name!r}: pip install -e '.[flower]'"
        ) from None

    payloads = [p.strip() for p in ns.payloads.split(",") if p.strip()]
    result = run(payloads, steps=ns.steps, uploads=ns.uploads, window=ns.window, tls=ns.tls)
    print(json.dumps(result, indent=2) if ns.json else format_table(result))
    return 0


def cmd_demo(ns: argparse.Namespace) -> int:
    from heronsfl.demo import run_demo
    from heronsfl.files import check_out_dir

    check_out_dir(ns.out)
    if ns.rounds is not None and ns.rounds < 1:
        raise UserError(f"--rounds {ns.rounds} must be >= 1")

    run_demo(
        Path(ns.out),
        rounds=ns.rounds,
        quiet=ns.quiet or not _interactive() and bool(os.environ.get("CI")),
    )
    return 0


# Commands whose module parses its own arguments: `heronsfl NAME ARGS...` -> module.main(ARGS).
PASSTHROUGH = {
    "report": ("heronsfl.report", "plot and tabulate finished runs"),
    "sweep": ("heronsfl.sweep", "run a grid of configs into one folder"),
    "deploy": ("heronsfl.engines.flower.deploy", "run on Flower: SuperLink + SuperNodes"),
    "attack": ("heronsfl.privacy.attack", "privacy attacks on a run: heronsfl attack inversion"),
}


def cmd_passthrough(ns: argparse.Namespace) -> int:
    import importlib

    name = PASSTHROUGH[ns.command][0]
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and not e.name.startswith("heronsfl"):
            extra = {"deploy": "flower", "report": "report", "attack": "privacy"}.get(
                ns.command, "all"
            )
            raise UserError(
                f"heronsfl {ns.command} needs {e.name!r}: pip install -e '.[{extra}]'"
            ) from None
        raise
    return int(module.main(ns.rest))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="heronsfl", description="Split federated learning with lean zeroth-order clients."
    )
    p.add_argument("--version", action="version", version=f"heronsfl {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one experiment")
    run.add_argument("args", nargs="*", metavar="[CONFIG.toml] [key=value ...]")
    run.add_argument("--out", help="run directory (default runs/<algorithm>-<task>-<time>)")
    run.add_argument("--overwrite", action="store_true", help="replace a completed run in --out")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    run.set_defaults(fn=cmd_run)

    val = sub.add_parser("validate", help="report every problem in a config at once")
    val.add_argument("config")
    val.add_argument("overrides", nargs="*", metavar="key=value")
    val.set_defaults(fn=cmd_validate)

    ls = sub.add_parser("ls", help="list algorithms, tasks, partitions and presets")
    ls.add_argument("--keys", action="store_true", help="list every config key with its default")
    ls.set_defaults(fn=cmd_ls)

    bench = sub.add_parser("bench", help="measure costs")
    bsub = bench.add_subparsers(dest="bench", required=True)
    res = bsub.add_parser("resources", help="client memory, MACs and bytes of one local step")
    res.add_argument("--task", default="resnet18-cifar10")
    res.add_argument("--batch-size", type=int, default=None, help="default: the paper's batch")
    res.add_argument("--algorithms", help="comma-separated (default: all)")
    res.add_argument("--upload-every", type=int, default=1, help="k, for uplink bytes per step")
    res.add_argument(
        "--local-steps", type=int, default=39, help="h, for the seeds exchange's bytes per round"
    )

    res.add_argument(
        "--zo-options",
        action="store_true",
        help="add a row per zeroth-order client option of heron-sfl (bench.ZO_OPTIONS)",
    )
    res.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    res.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    res.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    res.set_defaults(fn=cmd_bench)
    st = bsub.add_parser("stream", help="per-step stream round trip and client RSS on 127.0.0.1")
    st.add_argument("--payloads", default="digits,reference,paper", help="comma-separated")
    st.add_argument("--steps", type=int, default=100, help="timed round trips per payload")
    st.add_argument("--uploads", type=int, default=8, help="uploads per client for the RSS")
    st.add_argument("--window", type=int, default=2, help="uploads held per side")
    st.add_argument("--tls", action="store_true", help="over TLS (throwaway certificates)")
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    st.set_defaults(fn=cmd_bench_stream)

    demo = sub.add_parser("demo", help="HERON-SFL vs FO baselines on bundled digits, offline")
    demo.add_argument("--out", default="runs/demo", help="where the runs and table go")
    demo.add_argument("--rounds", type=int, default=None, help="override the demo's rounds")
    demo.add_argument("-q", "--quiet", action="store_true")
    demo.set_defaults(fn=cmd_demo)

    for name, (_, help_text) in PASSTHROUGH.items():
        extra = sub.add_parser(name, help=help_text, add_help=False)
        extra.add_argument("rest", nargs=argparse.REMAINDER)
        extra.set_defaults(fn=cmd_passthrough)
    return p


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in PASSTHROUGH:
        # Hand the rest (including --help) to the command's own parser, untouched.
        ns = argparse.Namespace(command=args[0], rest=args[1:], fn=cmd_passthrough)
    else:
        ns = build_parser().parse_args(args)

    logging.basicConfig(
        level=logging.INFO if not os.environ.get("CI") else logging.WARNING,
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        return int(ns.fn(ns))
    except UserError as e:
        print(f"heronsfl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("heronsfl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`heronsfl ls | head -1`): stop quietly, as `cat` does. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # stdout is not a real file (tests)
            pass
        return 141  # 128 + SIGPIPE, what a shell reports for a command its pipe closed
    except (MemoryError, RuntimeError) as e:
        line = allocation_failure(e)
        if line is None:
            raise
        print(f"heronsfl: error: {line}", file=sys.stderr)
        return 2


def allocation_failure(e: BaseException) -> str | None:
    """One line for an allocation failure, naming the size tried; None for any other error.

    MemoryError (numpy says "Unable to allocate 7.45 GiB ..."), torch's CPU allocator
    ("can't allocate memory: you tried to allocate N bytes") and CUDA's "out of memory. Tried
    to allocate 2.00 GiB" all end here, wherever in the run they happened.
    """
    text = str(e)
    if not isinstance(e, MemoryError) and not re.search(
        r"can't allocate memory|out of memory|Tried to allocate", text
    ):
        return None
    size = None
    if m := re.search(r"allocate (\d+) bytes", text):
        size = f"{int(m.group(1)) / 1e9:,.1f} GB"
    elif m := re.search(r"(?:allocate|Allocate) ([\d.]+ [KMGTP]i?B)", text):
        size = m.group(1)
    tried = f"tried to allocate {size}" if size else "an allocation failed (size not reported)"
    return (
        f"out of memory: {tried}; lower the sizes that scale memory (train.batch_size, "
        "train.eval_batch_size, model.width, clients, data.synthetic; bench: --batch-size)"
    )


if __name__ == "__main__":
    sys.exit(main())
