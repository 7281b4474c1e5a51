"""Emulated client links for `heronsfl deploy local`: one network namespace per client.

    heronsfl deploy local demo_cnn_digits --uplink-mbit 20 --downlink-mbit 50

On one machine every process talks over loopback, at memory speed. To see what a round costs
over a real client link, each SuperNode (and every process it starts: its ClientApps) runs in
its own Linux network namespace, joined to the host by a veth pair whose host end sits on a
bridge that carries the server's address:

    namespace heronsfl-<run>-<i>            host namespace
      eth0 10.a.b.(i+2) ==== veth ==== hsfl<run>h<i> -- bridge hsfl<run>br 10.a.b.1
      (SuperNode i, its ClientApps)                      (SuperLink, ServerApp)

Each direction is limited where its packets leave: an `htb` class on the namespace's `eth0`
(egress = client -> server, the uplink) and one on the host end (egress = server -> client, the
downlink). `htb` is used because it shapes the veth's large GSO packets exactly (measured: a
4 MB transfer at 8 Mbit/s takes 4.2 s); `netem` is not available on every kernel (not on this
project's machines), so no delay is added. Names carry a random per-run tag and the subnet is
one no interface or route uses, so parallel runs and leftovers of a killed run do not collide.

Needs root (CAP_NET_ADMIN) and iproute2's `ip` and `tc`; `check_available` says which is
missing. Leaving the context manager (also on an error, Ctrl-C or SIGTERM) deletes every
veth, namespace and bridge it made; processes in a namespace must have ended first
(`LocalFederation` closes before this does).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import secrets
import shutil
import signal
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from heronsfl.errors import UserError

log = logging.getLogger(__name__)


class LinkError(UserError):
    """The links could not be set up; the message quotes the `ip`/`tc` command and its error.

    Not protocol.DeployError: this module imports no torch, so a namespace helper starts fast.
    """


MAX_CLIENTS = 250  # one /24: .1 is the server, .2 .. .251 the clients
MAX_MBIT = 100_000.0  # 100 Gbit/s, above any veth's real throughput
_FLAGS = "--uplink-mbit/--downlink-mbit"


def check_available() -> None:
    """Raise UserError unless this process can create namespaces and shape links."""
    if os.geteuid() != 0:
        raise UserError(
            f"{_FLAGS} run each SuperNode in its own network namespace, which needs root "
            "(CAP_NET_ADMIN); run as root or drop the flags"
        )
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise UserError(
            f"{_FLAGS} need {' and '.join(missing)} (iproute2) on PATH; install iproute2 "
            "(e.g. apt-get install iproute2) or drop the flags"
        )


def _run(cmd: Sequence[str]) -> None:
    """One `ip`/`tc` command; its stderr becomes the error when it fails."""
    done = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LinkError(
            f"could not set up the emulated links: `{' '.join(cmd)}` failed: "
            f"{done.stderr.strip() or done.returncode}"
        )


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network an address or a route of this host namespace covers."""
    nets = []
    for cmd in (["ip", "-4", "-o", "addr", "show"], ["ip", "-4", "route", "show", "table", "all"]):
        out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
        for word in out.split():
            try:
                nets.append(ipaddress.ip_network(word, strict=False))
            except ValueError:
                continue
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network)]


def free_subnet(tries: int = 50) -> ipaddress.IPv4Network:
    """A random 10.x.y.0/24 that no address or route of this host uses (bounded tries)."""
    used = _used_networks()
    rng = random.Random(secrets.randbits(64))
    for _ in range(tries):
        net = ipaddress.IPv4Network(f"10.{rng.randint(100, 254)}.{rng.randint(0, 255)}.0/24")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise LinkError(f"no free 10.x.y.0/24 subnet for the emulated links after {tries} tries")


def htb_commands(dev: str, mbit: float, netns: str | None = None) -> list[list[str]]:
    """Limit `dev`'s egress to `mbit` Mbit/s: an htb root with one class every packet joins."""
    tc = ["tc", *(["-n", netns] if netns else [])]
    rate = f"{mbit * 1000:.3f}kbit"
    return [
        [*tc, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1"],
        [*tc, "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate", rate],
    ]


class EmulatedLinks:
    """Namespaces, veths and a bridge for `clients` clients, with rate-limited directions.

    `uplink_mbit` limits client -> server, `downlink_mbit` server -> client; None leaves that
    direction unshaped (the namespaces are still used). `host` is the address servers listen
    on; `wrap(i, cmd)` runs `cmd` inside client i's namespace. Use as a context manager.
    """

    def __init__(
        self,
        clients: int,
        uplink_mbit: float | None,
        downlink_mbit: float | None,
        report: Path | None = None,
    ) -> None:
        if not 1 <= clients <= MAX_CLIENTS:
            raise UserError(
                f"{_FLAGS} support 1 to {MAX_CLIENTS} clients (one /24 subnet), got {clients}"
            )
        self.clients = clients
        self.uplink_mbit = uplink_mbit
        self.downlink_mbit = downlink_mbit
        self.report = report  # where close() writes each link's tc statistics
        self.tag = secrets.token_hex(3)  # 6 hex digits: interface names stay within 15 bytes
        self.bridge = f"hsfl{self.tag}br"
        self.subnet: ipaddress.IPv4Network | None = None
        self._made: list[tuple[str, str]] = []  # ("link" | "netns", name), in creation order
        self._old_sigterm: signal.Handlers | None = None

    def namespace(self, client: int) -> str:
        return f"heronsfl-{self.tag}-{client}"

    def host_end(self, client: int) -> str:
        return f"hsfl{self.tag}h{client}"

    @property
    def host(self) -> str:
        """The server's address, reachable from every namespace (the bridge's)."""
        assert self.subnet is not None, "links not set up"
        return str(self.subnet.network_address + 1)

    def client_address(self, client: int) -> str:
        assert self.subnet is not None, "links not set up"
        return str(self.subnet.network_address + 2 + client)

    def wrap(self, client: int, cmd: Sequence[str]) -> list[str]:
        """`cmd` run in client `client`'s namespace (same pid: `ip netns exec` execs it)."""
        return ["ip", "netns", "exec", self.namespace(client), *cmd]

    def __enter__(self) -> EmulatedLinks:
        self._catch_sigterm()
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _catch_sigterm(self) -> None:
        """SIGTERM behaves as Ctrl-C while the links exist, so the teardown still runs."""
        if threading.current_thread() is not threading.main_thread():
            return

        def interrupt(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        self._old_sigterm = signal.signal(signal.SIGTERM, interrupt)  # type: ignore[assignment]

    def open(self) -> None:
        check_available()
        self.subnet = free_subnet()
        prefix = self.subnet.prefixlen
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self._made.append(("link", self.bridge))
        _run(["ip", "addr", "add", f"{self.host}/{prefix}", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        for i in range(self.clients):
            ns, veth = self.namespace(i), self.host_end(i)
            _run(["ip", "netns", "add", ns])
            self._made.append(("netns", ns))
            _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
            self._made.append(("link", veth))
            _run(["ip", "link", "set", veth, "master", self.bridge])
            _run(["ip", "link", "set", veth, "up"])
            _run(
                ["ip", "-n", ns, "addr", "add", f"{self.client_address(i)}/{prefix}", "dev", "eth0"]
            )
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])  # the SuperNode's own local APIs
            if self.uplink_mbit is not None:
                for cmd in htb_commands("eth0", self.uplink_mbit, netns=ns):
                    _run(cmd)
            if self.downlink_mbit is not None:
                for cmd in htb_commands(veth, self.downlink_mbit):
                    _run(cmd)
        log.warning(
            "emulated links: %d namespace(s) heronsfl-%s-*, server at %s, uplink %s, downlink %s",
            self.clients,
            self.tag,
            self.host,
            _rate(self.uplink_mbit),
            _rate(self.downlink_mbit),
        )

    def statistics(self) -> str:
        """`tc -s` of each shaped link end: bytes sent, drops, overlimits."""
        lines = []
        for i in range(self.clients):
            for name, cmd in [
                (
                    f"client {i} uplink",
                    ["tc", "-n", self.namespace(i), "-s", "class", "show", "dev", "eth0"],
                ),
                (f"client {i} downlink", ["tc", "-s", "class", "show", "dev", self.host_end(i)]),
            ]:
                out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
                lines += [f"# {name}: {' '.join(cmd)}", out.strip() or "(unshaped)", ""]
        return "\n".join(lines)

    def close(self) -> None:
        """Delete every veth, namespace and bridge made here (newest first); never raises."""
        if self._old_sigterm is not None:  # a second SIGTERM must not cut the teardown short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.report is not None and self._made:
            try:
                self.report.write_text(
                    f"uplink {_rate(self.uplink_mbit)}, downlink {_rate(self.downlink_mbit)}, "
                    f"server {self.host if self.subnet else '-'}, "
                    f"namespaces {self.namespace(0)} .. {self.namespace(self.clients - 1)}, "
                    f"bridge {self.bridge}\n\n{self.statistics()}\n"
                )
            except OSError as e:
                log.warning("could not write %s: %s", self.report, e)
        while self._made:
            kind, name = self._made.pop()
            cmd = ["ip", "link", "del", name] if kind == "link" else ["ip", "netns", "del", name]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            # A veth goes with its peer's namespace, and the reverse: already gone is fine.
            if done.returncode != 0 and "Cannot find device" not in done.stderr:
                log.warning("could not remove %s %s: %s", kind, name, done.stderr.strip())
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None


def _rate(mbit: float | None) -> str:
    return "unshaped" if mbit is None else f"{mbit:g} Mbit/s"
