"""`heronsfl run | bench | demo | validate | ls`.

User errors (bad config, missing data, divergence) end with one `heronsfl: error: ...` line and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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


def cmd_run(ns: argparse.Namespace) -> int:
    from heronsfl.config import load_config, split_config_args
    from heronsfl.runner import run_experiment

    path, overrides = split_config_args(ns.args)
    cfg = load_config(path, overrides)
    out = ns.out or f"runs/{cfg.algorithm}-{cfg.task}-{time.strftime('%Y%m%d-%H%M%S')}"
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
        summary = run_experiment(cfg, out, overwrite=ns.overwrite, on_round=on_round)
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
    from heronsfl.config import load_config, split_config_args

    path, overrides = split_config_args([ns.config, *ns.overrides])
    cfg = load_config(path, overrides)
    print(
        f"{ns.config}: ok ({cfg.algorithm} on {cfg.task}, "
        f"{cfg.rounds} rounds, {cfg.clients} clients)"
    )
    return 0


def cmd_ls(ns: argparse.Namespace) -> int:
    from heronsfl.algorithms import ALGORITHMS
    from heronsfl.config import describe_fields, presets
    from heronsfl.data.partition import PARTITIONERS
    from heronsfl.tasks import TASKS

    if ns.keys:
        for key, default, help_text in describe_fields():
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
    from heronsfl.bench import format_table, resources

    algorithms = (
        [a.strip() for a in ns.algorithms.split(",") if a.strip()] if ns.algorithms else None
    )
    rows = resources(
        ns.task,
        batch_size=ns.batch_size,
        algorithms=algorithms,
        device=ns.device,
        upload_every=ns.upload_every,
        local_steps=ns.local_steps,
        overrides=ns.overrides,
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
}


def cmd_passthrough(ns: argparse.Namespace) -> int:
    import importlib

    name = PASSTHROUGH[ns.command][0]
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and not e.name.startswith("heronsfl"):
            extra = {"deploy": "flower", "report": "report"}.get(ns.command, "all")
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


if __name__ == "__main__":
    sys.exit(main())
