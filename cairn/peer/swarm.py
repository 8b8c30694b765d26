"""`cairn swarm`: a whole Cairn network on one machine, on loopback.

It starts the coordinator (initialising its workdir on first use), N peers as separate processes
(each in its own process group, so stopping one stops its hivemind children too), and the
dashboard when installed; prints what runs where; shows the global step and each peer's samples
from the ledger; and on Ctrl+C or when the time is up stops everything and waits for it to exit.
It talks to the other roles only through their command lines and files, never by importing them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cairn.protocol.errors import CairnError
from cairn.protocol.ledger_schema import swarm_progress
from cairn.protocol.workdir import Workdir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PORTS_FILE = "ports.json"


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def stable_ports(workdir: Path, names: tuple[str, ...] = ("dht", "http", "dashboard")) -> dict[str, int]:
    """The ports of the first run on this workdir, again: the join address and the repository URL stay the same across
    reruns, so peers and pinned TUF roots keep working. A port taken meanwhile is replaced (and remembered)."""
    path = workdir / PORTS_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {}
    ports: dict[str, int] = {}
    for name in names:
        port = saved.get(name) if isinstance(saved, dict) else None
        if not (isinstance(port, int) and 1024 <= port <= 65535 and port not in ports.values() and port_free(port)):
            port = next(p for p in iter(free_port, None) if p not in ports.values())
        ports[name] = port
    if ports != saved:
        workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(ports, indent=2) + "\n")
    return ports


class StatusLine:
    """The live line of `cairn swarm`: a spinner on a terminal; into a log or a pipe, a plain line when the text changed,
    at most every `every` seconds (rich's status prints nothing at all there: five silent minutes looked like a hang)."""

    def __init__(self, console, first: str, every: float = 30.0, clock=time.monotonic):
        self.console, self.every, self.clock = console, every, clock
        self.terminal = console.is_terminal
        self._status = console.status(first) if self.terminal else None
        self._printed_at: float | None = None
        self._last: str | None = None
        if not self.terminal:
            self.update(first)

    def __enter__(self) -> "StatusLine":
        if self._status is not None:
            self._status.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)

    def update(self, text: str) -> None:
        if self._status is not None:
            self._status.update(text)
            return
        now = self.clock()
        if text != self._last and (self._printed_at is None or now - self._printed_at >= self.every):
            self.console.print(text, soft_wrap=True, markup=False, highlight=False)
            self._printed_at, self._last = now, text


def print_services(console, rows: list[tuple[str, str, str | None]], join: str, repository_url: str, dashboard_url: str | None) -> None:
    """What runs where; the addresses also on lines of their own, whole (a table cell cuts them at 80 columns)."""
    from rich.table import Table

    table = Table(title="cairn swarm", show_header=True)
    table.add_column("service")
    table.add_column("pid", justify="right")
    table.add_column("where", overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"join address: {join}", soft_wrap=True, markup=False, highlight=False)
    console.print(f"release repository: {repository_url}", soft_wrap=True, markup=False, highlight=False)
    if dashboard_url:
        console.print(f"dashboard: {dashboard_url}", soft_wrap=True, markup=False, highlight=False)


@dataclass
class Service:
    name: str
    args: list[str]
    log: Path
    process: subprocess.Popen | None = None

    def start(self, env: dict[str, str]) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.log, "ab")
        self.process = subprocess.Popen(
            self.args, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env
        )
        handle.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal_group(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signum)
            except ProcessLookupError:
                pass


@dataclass
class SwarmPlan:
    workdir: Path
    peers: int
    minutes: float | None
    run_id: str = "local-wordnet"
    corpus: str = "wordnet"
    init_args: list[str] = field(default_factory=list)  # training and swarm options for `cairn coordinator init`
    release_every: int = 0
    dashboard: bool = True
    dht_port: int | None = None  # None: the workdir's ports from its first run (stable_ports)
    http_port: int | None = None
    dashboard_port: int | None = None
    extra_peer_args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if None in (self.dht_port, self.http_port, self.dashboard_port):
            ports = stable_ports(self.workdir)
            self.dht_port = self.dht_port or ports["dht"]
            self.http_port = self.http_port or ports["http"]
            self.dashboard_port = self.dashboard_port or ports["dashboard"]


def cairn(*args: str) -> list[str]:
    return [sys.executable, "-m", "cairn.cli", *args]


def initialise(plan: SwarmPlan) -> Path:
    coordinator_dir = plan.workdir / "coordinator"
    if not Workdir(coordinator_dir).is_initialised():
        result = subprocess.run(
            cairn(
                "coordinator", "init", "--workdir", str(coordinator_dir), "--run-id", plan.run_id, "--corpus", plan.corpus, *plan.init_args
            ),
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise CairnError(f"coordinator init failed: {(result.stderr or result.stdout).strip().splitlines()[-1:]}")
    return coordinator_dir


def wait_for_join_address(coordinator_dir: Path, service: Service, started_after: float, timeout: float = 120.0) -> list[str]:
    workdir = Workdir(coordinator_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            raise CairnError(f"the coordinator exited; see {service.log}")
        state = workdir.read_state()
        if state is not None and state.started_at >= started_after:  # not the file a previous run left
            return list(state.join)
        time.sleep(0.5)
    raise CairnError(f"the coordinator did not start within {timeout:.0f} s; see {service.log}")


def _interrupt_on_sigterm(signum, frame) -> None:
    """SIGTERM handler: stop `cairn swarm` the way Ctrl+C does."""
    raise KeyboardInterrupt


def run_swarm(plan: SwarmPlan, console=None, stop_check=lambda: False) -> dict:
    """Start everything, show progress until time is up or Ctrl+C, stop everything; return a summary."""
    from rich.console import Console

    console = console or Console()
    plan.workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    coordinator_dir = initialise(plan)
    logs = plan.workdir / "logs"
    services: list[Service] = []
    interrupted = False
    previous_handler = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        started = time.time()
        coordinator = Service(
            "coordinator",
            cairn(
                "coordinator",
                "run",
                "--workdir",
                str(coordinator_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(plan.dht_port),
                "--http-host",
                "127.0.0.1",
                "--http-port",
                str(plan.http_port),
                "--release-every",
                str(plan.release_every),
            ),
            logs / "coordinator.log",
        )
        services.append(coordinator)
        coordinator.start(env)
        join = wait_for_join_address(coordinator_dir, coordinator, started)
        for index in range(plan.peers):
            name = f"peer-{index + 1}"
            peer = Service(
                name,
                cairn(
                    "peer",
                    "run",
                    "--join",
                    join[0],
                    "--name",
                    name,
                    "--workdir",
                    str(plan.workdir / "peers" / name),
                    "--host",
                    "127.0.0.1",
                    "--torch-threads",
                    "1",
                    "--no-progress",
                    "--wait-for-peers",
                    str(plan.peers),
                    *plan.extra_peer_args,
                ),
                logs / f"{name}.log",
            )
            services.append(peer)
            peer.start(env)
        dashboard_url = None
        if plan.dashboard and _dashboard_installed():
            dashboard = Service(
                "dashboard",
                cairn("dashboard", "serve", "--workdir", str(coordinator_dir), "--host", "127.0.0.1", "--port", str(plan.dashboard_port)),
                logs / "dashboard.log",
            )
            services.append(dashboard)
            dashboard.start(env)
            dashboard_url = f"http://127.0.0.1:{plan.dashboard_port}/"
        assert coordinator.process is not None  # start() set it
        rows: list[tuple[str, str, str | None]] = [
            ("coordinator", str(coordinator.process.pid), join[0]),
            ("releases (TUF)", "", f"http://127.0.0.1:{plan.http_port}/"),
        ]
        for service in services[1:]:
            assert service.process is not None  # every service in the list was started
            where = dashboard_url if service.name == "dashboard" else f"log: {service.log}"
            rows.append((service.name, str(service.process.pid), where))
        print_services(console, rows, join[0], f"http://127.0.0.1:{plan.http_port}/", dashboard_url)
        deadline = time.monotonic() + plan.minutes * 60 if plan.minutes else None
        with StatusLine(console, "starting peers…") as status:
            while deadline is None or time.monotonic() < deadline:
                if stop_check():
                    break
                dead = [s.name for s in services if not s.alive()]
                if dead:
                    raise CairnError(f"{', '.join(dead)} exited early; see {logs}")
                step, peers = swarm_progress(Workdir(coordinator_dir).ledger)
                shown = ", ".join(f"{name} {samples:,}" for name, samples in peers) or "waiting for the first records"
                status.update(f"global step {step} | samples credited: {shown}")
                time.sleep(2.0)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        stop_services(list(reversed(services)))
    step, peers = swarm_progress(Workdir(coordinator_dir).ledger)
    console.print(
        f"stopped{' on request' if interrupted else ''}: global step {step}; "
        + (", ".join(f"{name}: {samples:,} samples" for name, samples in peers) or "no records")
    )
    return {"global_step": step, "peers": dict(peers), "workdir": str(plan.workdir), "coordinator_dir": str(coordinator_dir)}


def start_loopback_coordinator(coordinator_dir: Path, log: Path, env: dict[str, str]) -> tuple[Service, str]:
    """`cairn coordinator run` for an initialised workdir on free loopback ports (benchmarks): the running service and
    its first join address. The caller stops it with stop_services; if it never announces an address it is stopped here."""
    started = time.time()
    coordinator = Service(
        "coordinator",
        cairn(
            "coordinator",
            "run",
            "--workdir",
            str(coordinator_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--http-host",
            "127.0.0.1",
            "--http-port",
            str(free_port()),
        ),
        log,
    )
    coordinator.start(env)
    try:
        return coordinator, wait_for_join_address(coordinator_dir, coordinator, started)[0]
    except BaseException:
        stop_services([coordinator])
        raise


def stop_services(services: list[Service], grace: float = 30.0) -> None:
    """SIGTERM each service's main process (peers first) so it shuts its hivemind children down itself,
    wait, then SIGKILL each whole process group so nothing (p2pd included) outlives the swarm."""
    for service in services:
        if service.alive():
            assert service.process is not None  # alive() checked it
            service.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for service in services:
        if service.process is None:
            continue
        try:
            service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        service.signal_group(signal.SIGKILL)  # the group: hivemind's daemons and p2pd included
        try:
            service.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _dashboard_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("cairn.dashboard.cli") is not None
