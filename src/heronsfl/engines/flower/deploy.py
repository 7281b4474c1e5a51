"""`heronsfl deploy`: run a config on Flower, server and clients as separate processes.

    heronsfl deploy local [CONFIG | PRESET] [key=value ...] --out DIR     # all on 127.0.0.1
    heronsfl deploy app [CONFIG | PRESET] [key=value ...] --app-dir APP --out /abs/run/dir
    heronsfl deploy partition [CONFIG | PRESET] [key=value ...] --out-dir DIR

`local` starts a SuperLink and one SuperNode per client on 127.0.0.1 (insecure: loopback only),
submits the app with `flwr run --stream`, waits for the run and ends every process it started,
also on failure or Ctrl-C. Flower's state and app installs live in a temporary FLWR_HOME, logs
in DIR/flower/. `app` only writes the Flower app (a pyproject.toml holding the whole config as
Flower run config) for `flwr run` against SuperLinks on real machines; `partition` writes each
client's training samples to its own .npz for SuperNodes that must hold their data only.
`local --uplink-mbit U --downlink-mbit D` runs each SuperNode in its own network namespace
behind a rate-limited link (links.py). See docs/deploy.md.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import typing
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import numpy as np

from heronsfl.algorithms import get_algorithm
from heronsfl.config import RunConfig, range_problem, split_config_args
from heronsfl.engines.flower import codec
from heronsfl.engines.flower.client_app import check_supported
from heronsfl.engines.flower.links import MAX_CLIENTS, MAX_MBIT, EmulatedLinks, check_available
from heronsfl.engines.flower.protocol import DeployError, DeployOptions, NodeSettings
from heronsfl.engines.simulation import client_partitions
from heronsfl.errors import ConfigError, UserError
from heronsfl.files import check_out_dir
from heronsfl.metrics.log import METRICS_FILE, SUMMARY_FILE
from heronsfl.registry import load_config
from heronsfl.tasks import load_datasets

log = logging.getLogger(__name__)

CONNECTION = "heronsfl-local"  # the SuperLink connection name in FLWR_HOME/config.toml
_START_TIMEOUT_S = 60.0  # a daemon that is not listening by then has failed
_STOP_TIMEOUT_S = 10.0  # SIGTERM, then SIGKILL after this long


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment of every Flower process: this venv first, no telemetry, no installs.

    Flower's daemons start helpers (flower-superexec, flwr-serverapp, flwr-clientapp) by name,
    so this interpreter's bin directory goes first on PATH. Runtime dependency installation is
    off: otherwise each run would `uv sync` the app's dependencies (a CUDA torch) per process.
    """
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    return env


def flower_command(name: str) -> str:
    """Path of a Flower console script, from this interpreter's environment first."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise UserError(f"{name} not found: pip install -e '.[flower]' in this environment")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def descendants(pid: int) -> list[int]:
    """Every live (not zombie) process below `pid` (Linux /proc; empty elsewhere).

    Flower starts its helpers in new sessions, so a process group does not reach them.
    """
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]  # the fields after "(comm)"
        if state != "Z":  # a zombie has exited already
            children.setdefault(int(ppid), []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None: gone, or not Linux).

    With the pid it identifies a process for good: a pid alone may be reused after it exits.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[19])  # field 22 of proc(5); fields[0] is field 3 (state)


def _signal(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class LocalFederation:
    """A SuperLink and one SuperNode per client on 127.0.0.1, as child processes.

    With `links` (set up already), each SuperNode runs in its client's network namespace and
    the SuperLink listens on the links' server address instead of 127.0.0.1.
    Use as a context manager: leaving it ends every process it started and their helpers.
    """

    def __init__(
        self,
        workdir: Path,
        clients: int,
        port: int = 0,
        logs: Path | None = None,
        links: EmulatedLinks | None = None,
    ) -> None:
        self.workdir = workdir
        self.logs = logs or workdir / "flower"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.home = Path(tempfile.mkdtemp(prefix="heronsfl-flwr-home-"))
        self.env = flower_env(self.home)
        self.clients = clients
        self.links = links
        self.host = links.host if links is not None else "127.0.0.1"
        self.port = port or free_port(self.host)
        self.superlink: subprocess.Popen[bytes] | None = None
        self.supernodes: list[subprocess.Popen[bytes]] = []
        self._files: list[IO[bytes]] = []
        # Every process started here or seen below one, as (pid, start time): close() ends
        # exactly these, never a later process that happens to reuse a pid.
        self._started: set[tuple[int, int | None]] = set()

    def __enter__(self) -> LocalFederation:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        out = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed in close()
        self._files.append(out)
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        self._started.add((proc.pid, start_time(proc.pid)))
        return proc

    def start(self) -> None:
        """Start the SuperLink, wait until it listens, then the SuperNodes."""
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{self.host}:{self.port}"\ninsecure = true\n'
        )
        self.superlink = self._spawn(
            "superlink",
            [
                flower_command("flower-superlink"),
                "--insecure",
                f"--host={self.host}",
                f"--port={self.port}",
                "--disable-runtime-dependency-installation",
            ],
        )
        self._wait_listening(self.superlink, self.port, "flower-superlink")
        for i in range(self.clients):
            self.supernodes.append(self.start_supernode(i))

    def start_supernode(self, partition_id: int) -> subprocess.Popen[bytes]:
        node = NodeSettings(partition_id, self.clients)
        cmd = [
            flower_command("flower-supernode"),
            "--insecure",
            f"--superlink={self.host}:{self.port}",
            "--host=127.0.0.1",  # its local API, for its own ClientApps (in its namespace)
            f"--port={free_port()}",
            "--node-config",
            codec.node_config_text(node),
        ]
        if self.links is not None:
            cmd = self.links.wrap(partition_id, cmd)
        return self._spawn(f"supernode-{partition_id}", cmd)

    def _wait_listening(self, proc: subprocess.Popen[bytes], port: int, name: str) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not _listening(port, self.host):
            if proc.poll() is not None:
                raise DeployError(f"{name} exited with {proc.returncode}; see {self.logs}")
            if time.monotonic() > deadline:
                raise DeployError(f"{name} not listening on port {port} after {_START_TIMEOUT_S} s")
            time.sleep(0.2)

    def run_app(self, app_dir: Path, timeout_s: float, echo: bool = True) -> int:
        """`flwr run APP --stream`: submits the run and follows its log until it ends.

        Returns flwr's exit status; raises DeployError when the run outlives `timeout_s`.
        """
        cmd = [flower_command("flwr"), "run", str(app_dir), CONNECTION, "--stream"]
        logfile = open(self.logs / "flwr-run.log", "wb")  # noqa: SIM115 - closed in close()
        self._files.append(logfile)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env)
        self._started.add((proc.pid, start_time(proc.pid)))

        def copy() -> None:
            assert proc.stdout is not None, "stdout is a pipe"
            for line in proc.stdout:
                logfile.write(line)
                logfile.flush()
                if echo:
                    sys.stderr.write(line.decode(errors="replace"))
                    sys.stderr.flush()

        pump = threading.Thread(target=copy, daemon=True)
        pump.start()
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None:
            self._remember_helpers()
            if time.monotonic() > deadline:
                self._stop([proc.pid])
                raise DeployError(f"the run did not finish within {timeout_s:.0f} s")
            time.sleep(0.5)
        pump.join(timeout=5)
        return int(proc.returncode)

    def _remember_helpers(self) -> None:
        """Note the helpers below each process now, so close() finds them even if orphaned."""
        for pid, _ in list(self._started):
            self._started.update((child, start_time(child)) for child in descendants(pid))

    def _alive_started(self) -> list[int]:
        return [pid for pid, t in self._started if t is not None and start_time(pid) == t]

    def kill_supernode(self, partition_id: int) -> None:
        """SIGKILL a SuperNode and everything below it (a client device dying)."""
        proc = self.supernodes[partition_id]
        self._remember_helpers()
        pids = [proc.pid, *descendants(proc.pid)]
        _signal(pids, signal.SIGKILL)
        proc.wait(timeout=_STOP_TIMEOUT_S)

    def _stop(self, pids: Sequence[int]) -> None:
        """SIGTERM, then SIGKILL whoever is still there after a grace period."""
        started = {pid: start_time(pid) for pid in pids}
        _signal(pids, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal([p for p in pids if _alive(p) and start_time(p) == started[p]], signal.SIGKILL)

    def close(self) -> None:
        """End every process this federation started (daemons and their helpers)."""
        self._remember_helpers()
        self._stop(self._alive_started())
        for proc in [*self.supernodes, *([self.superlink] if self.superlink else [])]:
            try:
                proc.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("process %d did not exit", proc.pid)
        for f in self._files:
            f.close()
        shutil.rmtree(self.home, ignore_errors=True)


# ----------------------------------------------------------------------------- commands


def _config(args: list[str]) -> RunConfig:
    config, overrides = split_config_args(args)
    cfg = load_config(config, [o for o in overrides if not o.startswith(_DEPLOY_PREFIX)])
    check_supported(get_algorithm(cfg.algorithm))
    return cfg


_DEPLOY_PREFIX = "deploy."


def _deploy_overrides(args: list[str]) -> dict[str, Any]:
    """`deploy.KEY=VALUE` overrides (e.g. deploy.window=4), typed by DeployOptions' fields."""
    hints = typing.get_type_hints(DeployOptions)
    out: dict[str, Any] = {}
    problems = []
    for arg in args:
        if not arg.startswith(_DEPLOY_PREFIX) or "=" not in arg:
            continue
        key, value = arg[len(_DEPLOY_PREFIX) :].split("=", 1)
        typ = hints.get(key)
        if typ is None or key == "out":
            problems.append(f"unknown deploy option {arg.split('=')[0]!r}; known: {_keys()}")
            continue
        try:
            out[key] = value.lower() in ("1", "true") if typ is bool else typ(value)
        except ValueError:
            problems.append(f"{_DEPLOY_PREFIX}{key} = {value!r} must be a {typ.__name__}")
    if problems:
        raise ConfigError(problems)
    return out


def _keys() -> str:
    return ", ".join(f"{_DEPLOY_PREFIX}{k}" for k in DeployOptions.keys() if k != "out")


def _options(ns: argparse.Namespace, out: Path) -> DeployOptions:
    return DeployOptions(
        **{
            "out": str(out),
            "round_timeout_s": ns.round_timeout,
            "min_clients": ns.min_clients,
            "connect_timeout_s": ns.connect_timeout,
            "overwrite": ns.overwrite,
            **_deploy_overrides(ns.args),
        }
    )


def write_app(app_dir: Path, cfg: RunConfig, opts: DeployOptions) -> Path:
    """Write the Flower app (only a pyproject.toml) that runs `cfg`; returns its path."""
    app_dir.mkdir(parents=True, exist_ok=True)
    path = app_dir / "pyproject.toml"
    path.write_text(codec.app_pyproject(cfg, opts))
    return path


def _absolute_paths(cfg: RunConfig) -> RunConfig:
    """data.root and data.cache_dir as absolute paths: Flower's processes have their own cwd."""
    data = cfg.data
    root = str(Path(data.root).resolve())
    cache = str(Path(data.cache_dir).resolve()) if data.cache_dir else ""
    return replace(cfg, data=replace(data, root=root, cache_dir=cache))


def _check_flags(ns: argparse.Namespace) -> None:
    """Every numeric deploy flag in range (the config's range walker), before any work."""
    checks = [
        ("--round-timeout", ns.round_timeout, ">0"),
        ("--connect-timeout", ns.connect_timeout, ">0"),
        ("--min-clients", ns.min_clients, ">0"),
    ]
    if hasattr(ns, "port"):
        checks += [("--port", ns.port, "[0, 65535]"), ("--timeout", ns.timeout, ">=0")]
    for flag in ("uplink_mbit", "downlink_mbit"):
        if getattr(ns, flag, None) is not None:
            checks.append((f"--{flag.replace('_', '-')}", getattr(ns, flag), f"(0, {MAX_MBIT:g}]"))
    problems = [p for flag, v, check in checks if (p := range_problem(flag, v, check))]
    if problems:
        raise ConfigError(problems)


def cmd_local(ns: argparse.Namespace) -> int:
    _check_flags(ns)
    shaped = ns.uplink_mbit is not None or ns.downlink_mbit is not None
    if shaped:
        check_available()  # root, ip and tc, before anything is read or written
    if ns.out is not None:
        check_out_dir(ns.out)
    cfg = _absolute_paths(_config(ns.args))
    out = Path(ns.out or f"runs/deploy-{cfg.algorithm}-{time.strftime('%Y%m%d-%H%M%S')}")
    out = check_out_dir(out).resolve()
    opts = _options(ns, out)
    if (out / SUMMARY_FILE).exists() and not opts.overwrite:
        raise UserError(f"{out} already holds a completed run; choose another --out or --overwrite")
    # Generous bound: waiting for clients, then every round at its timeout plus local work.
    timeout = ns.timeout or opts.connect_timeout_s + cfg.rounds * (opts.round_timeout_s + 60) + 120
    # Daemon logs go to a folder of their own and join the run directory only once it exists
    # (a round was logged): a start that fails leaves --out as it found it and says where the
    # logs are.
    if shaped and cfg.clients > MAX_CLIENTS:
        raise UserError(f"--uplink-mbit/--downlink-mbit support at most {MAX_CLIENTS} clients")
    logs = Path(tempfile.mkdtemp(prefix="heronsfl-deploy-logs-"))
    try:
        with contextlib.ExitStack() as stack:
            links = None
            if shaped:  # namespaces first: they are torn down after the processes in them
                links = stack.enter_context(
                    EmulatedLinks(cfg.clients, ns.uplink_mbit, ns.downlink_mbit, logs / "links.txt")
                )
            fed = stack.enter_context(LocalFederation(out, cfg.clients, ns.port, logs, links))
            if links is not None and opts.stream_listen == DeployOptions.stream_listen:
                # The per-step stream goes over the emulated links too, like the SuperLink.
                opts = replace(opts, stream_listen=f"{links.host}:0")
            app_dir = fed.home / "app"
            write_app(app_dir, cfg, opts)
            log.warning(
                "SuperLink on %s:%d, %d SuperNodes; logs in %s",
                fed.host,
                fed.port,
                cfg.clients,
                fed.logs,
            )
            status = fed.run_app(app_dir, timeout, echo=not ns.quiet)
    finally:
        if (out / METRICS_FILE).is_file():
            shutil.rmtree(out / "flower", ignore_errors=True)  # a previous attempt's logs
            shutil.move(str(logs), out / "flower")
            logs = out / "flower"
    if not (out / SUMMARY_FILE).exists():
        after = (
            "the same command resumes from the last checkpoint"
            if (out / METRICS_FILE).is_file()
            else f"no round finished, so {out} was left as it was"
        )
        raise DeployError(
            f"the run ended (flwr run exit status {status}) without finishing its rounds; "
            f"see {logs}/*.log; {after}"
        )
    log.warning("done: %s", out)
    return 0


def cmd_app(ns: argparse.Namespace) -> int:
    _check_flags(ns)
    check_out_dir(ns.app_dir, "--app-dir")
    cfg = _config(ns.args)
    out = Path(ns.out)
    if not out.is_absolute():
        raise UserError(
            f"--out {ns.out!r} must be an absolute path: the ServerApp writes it on the "
            "SuperLink's machine, from a working directory of Flower's choosing"
        )
    path = write_app(Path(ns.app_dir), cfg, _options(ns, out))
    print(f"wrote {path}")
    print(f"run it with: flwr run {ns.app_dir} <connection> --stream")
    print("start one SuperNode per client, each with its --node-config:")
    for i in range(cfg.clients):
        print(
            f"  client {i}: --node-config '{codec.node_config_text(NodeSettings(i, cfg.clients))}'"
        )
    return 0


def cmd_partition(ns: argparse.Namespace) -> int:
    out = check_out_dir(ns.out_dir, "--out-dir")
    cfg = _config(ns.args)
    train = load_datasets(cfg, "train")
    parts = client_partitions(cfg, train)  # fails (too many clients) before anything is written
    out.mkdir(parents=True, exist_ok=True)
    for i, idx in enumerate(parts):
        path = out / f"client_{i}.npz"
        np.savez(path, x=train.x[idx].numpy(), y=train.y[idx].numpy())
        node = NodeSettings(i, cfg.clients, data_path=str(path.resolve()))
        print(f"{path}: {len(idx)} samples; --node-config '{codec.node_config_text(node)}'")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="heronsfl deploy", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("args", nargs="*", metavar="[CONFIG.toml | PRESET] [key=value ...]")
        d = DeployOptions.__dataclass_fields__
        q.add_argument(
            "--round-timeout",
            type=float,
            default=d["round_timeout_s"].default,
            help=d["round_timeout_s"].metadata["help"] + " (seconds)",
        )
        q.add_argument(
            "--min-clients",
            type=int,
            default=d["min_clients"].default,
            help=d["min_clients"].metadata["help"],
        )
        q.add_argument(
            "--connect-timeout",
            type=float,
            default=d["connect_timeout_s"].default,
            help=d["connect_timeout_s"].metadata["help"] + " (seconds)",
        )
        q.add_argument("--overwrite", action="store_true", help=d["overwrite"].metadata["help"])

    local = sub.add_parser("local", help="SuperLink + one SuperNode per client on 127.0.0.1")
    common(local)
    local.add_argument("--out", help="run directory (default runs/deploy-<algorithm>-<time>)")
    local.add_argument("--port", type=int, default=0, help="SuperLink port (default: a free one)")
    local.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        help="give up after this many seconds (default: from the round timeout)",
    )
    local.add_argument(
        "--uplink-mbit",
        type=float,
        default=None,
        help="run each SuperNode in its own network namespace and limit client -> server to "
        "this many Mbit/s (needs root, ip and tc; see docs/deploy.md)",
    )
    local.add_argument(
        "--downlink-mbit",
        type=float,
        default=None,
        help="as --uplink-mbit, for server -> client (a direction without a flag is unshaped)",
    )
    local.add_argument("-q", "--quiet", action="store_true", help="do not echo Flower's log")
    local.set_defaults(fn=cmd_local)

    app = sub.add_parser("app", help="write a Flower app directory for `flwr run`")
    common(app)
    app.add_argument("--app-dir", required=True, help="where to write pyproject.toml")
    app.add_argument("--out", required=True, help="run directory on the SuperLink's machine")
    app.set_defaults(fn=cmd_app)

    part = sub.add_parser("partition", help="write each client's training samples to an .npz")
    part.add_argument("args", nargs="*", metavar="[CONFIG.toml | PRESET] [key=value ...]")
    part.add_argument("--out-dir", required=True, help="where client_<i>.npz go")
    part.set_defaults(fn=cmd_partition)
    return p


def main(argv: list[str]) -> int:
    """`heronsfl deploy ARGS` (called by heronsfl.cli); UserError reaches the CLI's handler."""
    ns = build_parser().parse_args(argv)
    return int(ns.fn(ns))
