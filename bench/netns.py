"""A shaped private network out of Linux network namespaces, for benchmarks and tests (root only).

    net = ShapedNetwork(["c", "p1", "p2"], rates_mbit={"p1": 50, "p2": 50})
    with net:
        subprocess.run(net.exec_in("p1") + ["python", "-c", "..."])   # runs inside p1's namespace

Layout: one "hub" namespace holds a bridge; every node gets its own namespace with `lo` up and an
`eth0` on 10.77.0.0/24, whose other end (`v-NODE`) is a port of the hub's bridge. Nothing is created
in the root namespace, so deleting the namespaces removes every veth and the bridge with them.

Shaping (tc tbf, no netem in this kernel: rate only, no delay, loss or jitter):
- a node's uplink is tbf on its own `eth0` (what it sends);
- its downlink is tbf on `v-NODE` in the hub (what the bridge delivers to it).

Names are `cairnnet-<owner pid>-<node>`: `cleanup_leftovers()` removes only namespaces with this
prefix whose owner process is gone (after a SIGKILL), never one a live run still uses.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

PREFIX = "cairnnet"
SUBNET = "10.77.0"
_NODE_NAME = re.compile(r"^[a-z][a-z0-9]{0,9}$")  # v-NAME must fit the 15-character interface name limit


class NetnsError(RuntimeError):
    pass


MEASURE_PORT = 5201
_RECEIVER = f"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], {MEASURE_PORT})); s.listen(1)
print("ready", flush=True)
c, _ = s.accept(); n, first = 0, None
while True:
    data = c.recv(1 << 16)
    if not data:
        break
    first = first or time.monotonic()
    n += len(data)
print(n, time.monotonic() - first)
"""
_SENDER = f"""
import socket, sys
c = socket.create_connection((sys.argv[1], {MEASURE_PORT}), timeout=60); chunk = bytes(1 << 16); left = int(sys.argv[2])
while left > 0:
    c.sendall(chunk[:left]); left -= len(chunk)
c.close()
"""


def _run(*args: str) -> str:
    result = subprocess.run(list(args), capture_output=True, text=True)
    if result.returncode != 0:
        raise NetnsError(f"`{' '.join(args)}` failed: {(result.stderr or result.stdout).strip()}")
    return result.stdout


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here (one line), or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); run as root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    probe = f"{PREFIX}-{os.getpid()}-probe"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if result.returncode != 0:
        return f"cannot create a network namespace: {result.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def list_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_leftovers(include_live: bool = False) -> list[str]:
    """Delete this module's namespaces (cairnnet-PID-*) whose owner PID is gone; all of them with include_live."""
    removed = []
    for name in list_namespaces():
        match = re.match(rf"^{PREFIX}-(\d+)-", name)
        if not match:
            continue
        if not include_live and _owner_alive(int(match.group(1))) and int(match.group(1)) != os.getpid():
            continue
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        removed.append(name)
    return removed


@dataclass
class ShapedNetwork:
    nodes: list[str]
    rates_mbit: dict[str, float] = field(default_factory=dict)  # node -> up and down rate; a node not listed is unshaped
    latency_ms: float = 100.0  # tbf queue bound (a home router's buffer), not added delay
    owner: int = field(default_factory=os.getpid)
    created: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.nodes or len(set(self.nodes)) != len(self.nodes) or len(self.nodes) > 250:
            raise NetnsError(f"nodes must be 1-250 distinct names, got {self.nodes}")
        for node in self.nodes:
            if not _NODE_NAME.match(node) or node == "hub":
                raise NetnsError(f"node name {node!r}: use 1-10 lowercase letters/digits, starting with a letter (not 'hub')")
        for node, rate in self.rates_mbit.items():
            if node not in self.nodes:
                raise NetnsError(f"rate for unknown node {node!r}")
            if not (0.1 <= rate <= 100_000):
                raise NetnsError(f"rate for {node} must be 0.1-100000 Mbit/s, got {rate}")

    def namespace(self, node: str) -> str:
        return f"{PREFIX}-{self.owner}-{node}"

    @property
    def hub(self) -> str:
        return self.namespace("hub")

    def address(self, node: str) -> str:
        return f"{SUBNET}.{self.nodes.index(node) + 1}"

    def exec_in(self, node: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(node)]

    def _add_namespace(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self.created.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def _shape(self, namespace: str, device: str, rate_mbit: float) -> None:
        rate_bytes = rate_mbit * 1e6 / 8
        burst = max(16_000, int(rate_bytes / 250))  # at least one 4 ms tick of tokens (HZ=250), else tbf caps below the rate
        _run(
            "tc",
            "-n",
            namespace,
            "qdisc",
            "replace",
            "dev",
            device,
            "root",
            "tbf",
            "rate",
            f"{rate_mbit}mbit",
            "burst",
            str(burst),
            "latency",
            f"{self.latency_ms:g}ms",
        )

    def create(self) -> "ShapedNetwork":
        atexit.register(self.destroy)
        try:
            self._add_namespace(self.hub)
            _run("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
            _run("ip", "-n", self.hub, "link", "set", "br0", "up")
            for node in self.nodes:
                ns, port = self.namespace(node), f"v-{node}"
                self._add_namespace(ns)
                _run("ip", "-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _run("ip", "-n", self.hub, "link", "set", port, "master", "br0", "up")
                _run("ip", "-n", ns, "addr", "add", f"{self.address(node)}/24", "dev", "eth0")
                _run("ip", "-n", ns, "link", "set", "eth0", "up")
                if node in self.rates_mbit:
                    self._shape(ns, "eth0", self.rates_mbit[node])  # uplink
                    self._shape(self.hub, port, self.rates_mbit[node])  # downlink
        except BaseException:
            self.destroy()
            raise
        return self

    def counters(self) -> dict[str, dict[str, int]]:
        """Bytes each node sent (`up`) and received (`down`) through its link, from the hub's veth counters."""
        links = json.loads(_run("ip", "-j", "-s", "-n", self.hub, "link", "show"))
        out = {}
        for link in links:
            name = link.get("ifname", "")
            if name.startswith("v-") and name[2:] in self.nodes:
                stats = link["stats64"]
                # the hub port receives what the node sends and transmits what the node receives
                out[name[2:]] = {"up": int(stats["rx"]["bytes"]), "down": int(stats["tx"]["bytes"])}
        return out

    def qdisc_stats(self, node: str) -> str:
        return _run("tc", "-s", "-n", self.namespace(node), "qdisc", "show", "dev", "eth0")

    def measure_mbit(self, sender: str, receiver: str, megabytes: float = 8.0, timeout: float = 120.0) -> float:
        """Send `megabytes` over one TCP connection from `sender` to `receiver`; the receiver's rate in Mbit/s (from its
        first byte to its last), i.e. what the slower of the sender's uplink and the receiver's downlink lets through."""
        server = subprocess.Popen(
            self.exec_in(receiver) + [sys.executable, "-c", _RECEIVER, self.address(receiver)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            ready = server.stdout.readline().strip()
            if ready != "ready":
                raise NetnsError(f"throughput receiver did not start: {server.stderr.read().strip()[-300:]}")
            _run(*self.exec_in(sender), sys.executable, "-c", _SENDER, self.address(receiver), str(int(megabytes * 1e6)))
            out, err = server.communicate(timeout=timeout)
            received, seconds = out.split()
            return int(received) * 8 / float(seconds) / 1e6
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()

    def destroy(self) -> None:
        """Delete every namespace this network created (their veths and the bridge go with them). Idempotent."""
        while self.created:
            subprocess.run(["ip", "netns", "del", self.created.pop()], capture_output=True)
        atexit.unregister(self.destroy)

    def __enter__(self) -> "ShapedNetwork":
        return self.create()

    def __exit__(self, *exc) -> None:
        self.destroy()
