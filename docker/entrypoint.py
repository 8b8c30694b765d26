#!/usr/bin/env python3
"""Entrypoint of Cairn's container images: a role and its arguments become `cairn` command lines.

    entrypoint.py coordinator [run|init|release|export-root-key|keys SUB] [ARGS...]   (default subcommand: run)
    entrypoint.py peer [ARGS of `cairn peer run`...]
    entrypoint.py dashboard [ARGS of `cairn dashboard serve`...]
    entrypoint.py cairn [ANY cairn ARGS...]                                  (e.g. `release pull URL --to DIR`)

What it adds, from the environment the Dockerfiles set (override with `docker run -e` or compose
`environment:`); arguments given by the user come last, so for any single-valued flag they win:

    coordinator  --workdir $CAIRN_WORKDIR on every subcommand. `run` first runs
                 `cairn coordinator init --workdir $CAIRN_WORKDIR $CAIRN_INIT_ARGS` when the workdir
                 holds no run.json yet (a fresh volume), deletes a coordinator.json left by a previous
                 container (so nobody reads a stale join address), and adds
                 --metrics-port $CAIRN_METRICS_PORT (the image's health check reads /metrics there) and
                 --announce-host $CAIRN_ANNOUNCE_HOST when that is set.
    peer         --workdir $CAIRN_WORKDIR --metrics-port $CAIRN_METRICS_PORT --no-progress, and the join
                 address unless ARGS has --join: $CAIRN_JOIN (space-separated) when set, else the "join"
                 list of the coordinator's $CAIRN_COORDINATOR_STATE (coordinator.json on the coordinator's
                 volume, mounted read-only), waited for up to $CAIRN_JOIN_TIMEOUT seconds; loopback
                 addresses in it are dropped (they name the coordinator's own container); an empty
                 folder there (nothing mounted) is an error at once.
    dashboard    --workdir $CAIRN_WORKDIR (the coordinator's workdir, read-only) --host 0.0.0.0
                 --port $CAIRN_DASHBOARD_PORT.

`plan()` only reads files and runs nothing, so tests check every command line an image can run against
the real click commands. `main()` runs all commands but the last, then execs the last: `cairn` becomes
the main process (under tini) and gets docker's SIGTERM itself.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# the image's python is the venv's, where cairn is installed; the file contract is read through it, never re-parsed
from cairn.protocol.errors import CairnError
from cairn.protocol.workdir import CoordinatorState, Workdir

COORDINATOR_SUBCOMMANDS = ("run", "init", "release", "export-root-key", "keys")
ROLES = ("coordinator", "peer", "dashboard", "cairn")


class EntrypointError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


@dataclass
class Plan:
    commands: list[list[str]]  # run in order; the last one replaces this process
    stale_files: list[Path] = field(default_factory=list)  # deleted before the first command


def _env(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise EntrypointError(f"{name} is not set (the image sets it; was it overridden with an empty value?)")
    return value


def _has_flag(args: Sequence[str], flag: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in args)


def read_join(state_file: Path) -> list[str] | None:
    """The coordinator's join addresses from its coordinator.json, or None while there is none (yet).

    A malformed file also reads as none: the coordinator replaces it atomically when it starts, so waiting is right.
    """
    try:
        state = CoordinatorState.load(state_file)
    except CairnError:
        return None
    return routable(state.join)


def routable(addresses: Sequence[str]) -> list[str]:
    """Drop loopback addresses, unless nothing else is left (host networking shares one loopback)."""

    def loopback(address: str) -> bool:
        parts = address.split("/")
        if len(parts) > 2 and parts[1] in ("ip4", "ip6"):
            try:
                return ipaddress.ip_address(parts[2]).is_loopback
            except ValueError:
                return False
        return False

    kept = [address for address in addresses if not loopback(address)]
    return kept or list(addresses)


def wait_for_join(state_file: Path, timeout: float, poll: float = 2.0) -> list[str]:
    """Wait until the coordinator has written its join addresses; a clear error after `timeout` s."""
    hint = ("Mount the coordinator's volume read-only there, or pass --join /ip4/HOST/tcp/31337/p2p/PEER_ID "
            "(or set CAIRN_JOIN)")
    directory = state_file.parent
    if not state_file.exists() and (not directory.is_dir() or not any(directory.iterdir())):
        # nothing is mounted there (a volunteer's `docker run` without --join): say so now, not in ten minutes
        raise EntrypointError(f"no join address: {directory} is empty, so no coordinator writes {state_file.name} there. {hint}")
    deadline = time.monotonic() + timeout
    announced = False
    while True:
        join = read_join(state_file)
        if join:
            return join
        if time.monotonic() >= deadline:
            raise EntrypointError(f"no join address: {state_file} did not appear within {timeout:.0f} s. {hint}")
        if not announced:
            print(f"waiting for the coordinator's join address in {state_file}", file=sys.stderr, flush=True)
            announced = True
        time.sleep(poll)


def plan(role: str, args: Sequence[str], env: Mapping[str, str],
         join_source: Callable[[Path, float], list[str]] = wait_for_join) -> Plan:
    """The command lines for `role` with `args` under `env`; reads files, changes nothing."""
    args = list(args)
    if role == "coordinator":
        return _plan_coordinator(args, env)
    if role == "peer":
        return _plan_peer(args, env, join_source)
    if role == "dashboard":
        workdir = _env(env, "CAIRN_WORKDIR")
        return Plan([["cairn", "dashboard", "serve", "--workdir", workdir, "--host", "0.0.0.0",
                      "--port", _env(env, "CAIRN_DASHBOARD_PORT"), *args]])
    if role == "cairn":
        return Plan([["cairn", *args]])
    raise EntrypointError(f"unknown role {role!r}; the first argument must be one of {', '.join(ROLES)}")


def _plan_coordinator(args: list[str], env: Mapping[str, str]) -> Plan:
    subcommand = "run"
    if args and not args[0].startswith("-"):
        subcommand, args = args[0], args[1:]
    if subcommand not in COORDINATOR_SUBCOMMANDS:
        raise EntrypointError(f"unknown coordinator subcommand {subcommand!r}; use one of {', '.join(COORDINATOR_SUBCOMMANDS)}")
    workdir = _env(env, "CAIRN_WORKDIR")
    if subcommand == "keys":  # a group: --workdir belongs to its subcommand (`keys export-root --workdir W --out DIR`)
        if not args or args[0].startswith("-"):
            raise EntrypointError("coordinator keys needs a subcommand: list, export-root, add, revoke, rotate, encrypt or sign-release")
        return Plan([["cairn", "coordinator", "keys", args[0], "--workdir", workdir, *args[1:]]])
    if subcommand != "run":
        return Plan([["cairn", "coordinator", subcommand, "--workdir", workdir, *args]])
    commands: list[list[str]] = []
    if not Workdir(Path(workdir)).is_initialised():
        commands.append(["cairn", "coordinator", "init", "--workdir", workdir, *shlex.split(env.get("CAIRN_INIT_ARGS", ""))])
    run = ["cairn", "coordinator", "run", "--workdir", workdir, "--metrics-port", _env(env, "CAIRN_METRICS_PORT")]
    announce = env.get("CAIRN_ANNOUNCE_HOST", "").strip()
    if announce:
        run += ["--announce-host", announce]
    commands.append(run + args)
    return Plan(commands, stale_files=[Workdir(Path(workdir)).state_file])


def _plan_peer(args: list[str], env: Mapping[str, str], join_source: Callable[[Path, float], list[str]]) -> Plan:
    command = ["cairn", "peer", "run"]
    if not _has_flag(args, "--join"):
        join = env.get("CAIRN_JOIN", "").split()
        if not join:
            state = env.get("CAIRN_COORDINATOR_STATE", "").strip()
            if not state:
                raise EntrypointError("no join address: pass --join /ip4/HOST/tcp/31337/p2p/PEER_ID, or set CAIRN_JOIN")
            join = join_source(Path(state), float(env.get("CAIRN_JOIN_TIMEOUT", "600") or 600))
        for address in join:
            command += ["--join", address]
    command += ["--workdir", _env(env, "CAIRN_WORKDIR"), "--metrics-port", _env(env, "CAIRN_METRICS_PORT"), "--no-progress"]
    return Plan([command + args])


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    try:
        steps = plan(argv[0], argv[1:], os.environ)
    except EntrypointError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    for stale in steps.stale_files:
        stale.unlink(missing_ok=True)
    *before, last = steps.commands
    for command in before:
        print("+ " + shlex.join(command), file=sys.stderr, flush=True)
        result = subprocess.run(command, check=False)
        if result.returncode != 0:
            sys.exit(result.returncode)
    print("+ " + shlex.join(last), file=sys.stderr, flush=True)
    os.execvp(last[0], last)


if __name__ == "__main__":
    main()
