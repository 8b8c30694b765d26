"""The container images built and run on a real Docker engine (issue 15); tests/test_docker.py checks their sources.

One module fixture builds the three CPU images under names of its own (tests/docker_build.py: a base made
with debootstrap, the torch wheel served on loopback), or adopts those scripts/test.sh built in the
background while the unit tests ran, and at the end removes exactly what the build created.

- test_no_secret_in_any_layer: every file of every layer (a file deleted in a later layer is still in
  the image) is checked for key and workdir names and private-key blocks; the image configuration and
  history for credentials.
- test_compose_network_end_to_end: docker/compose.yaml (image and volume names, published ports and the
  swarm's size made the test's own) brought up: coordinator, dashboard, two CPU peers; a signed release
  cut from training, pulled and verified from the host against the root copied out of the volume; every
  HEALTHCHECK healthy; every container stopped by SIGTERM within its grace period; after a restart the
  ledger, the releases, the coordinator's join address and the peers' identities are still there.

Where no engine answers the module skips with one line; `bash scripts/docker-engine.sh` (run by .ci/run)
installs and starts one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from cairn.peer.swarm import cairn, free_port
from cairn.protocol.workdir import CoordinatorState, Workdir
from docker_build import TARGETS, Built, BuildError, CannotBuild, adopt_prebuilt, build_images, remove_built
from swarm_util import wait_for

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker" / "compose.yaml"
GRACE_SECONDS = 60  # compose.yaml's stop_grace_period
START_TIMEOUT = 600

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]


def _run(args: list[str], timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(args[:6])} ... exited {result.returncode}: {(result.stderr or result.stdout)[-3000:]}")
    return result


def engine_problem() -> str | None:
    """Why no container can run here, or None."""
    if shutil.which("docker") is None:
        return "no docker command"
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "docker info did not answer within 30 s"
    if info.returncode != 0:
        return "no Docker engine answers (" + (info.stderr.strip().splitlines() or ["docker info failed"])[-1][:160] + ")"
    if compose_command() is None:
        return "neither `docker compose` nor `docker-compose` is installed"
    return None


def compose_command() -> list[str] | None:
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


_problem = engine_problem()
if _problem:
    pytest.skip(
        f"container tests skipped: {_problem}; `bash scripts/docker-engine.sh` installs and starts an engine", allow_module_level=True
    )


@pytest.fixture(scope="module")
def built():
    """The images: adopted from scripts/test.sh's background build when it started one, else built here."""
    state = os.environ.get("CAIRN_PREBUILT_IMAGES")
    try:
        if state:
            pid = os.environ.get("CAIRN_PREBUILT_PID")
            result = adopt_prebuilt(Path(state), int(pid) if pid else None)
            print(f"\nadopted the images built in the background: {result.seconds}")
        else:
            result = build_images()
    except CannotBuild as reason:
        pytest.skip(f"container tests skipped: {reason}")
    except BuildError as error:
        pytest.fail(str(error))
    try:
        sizes = {t: int(_run(["docker", "image", "inspect", "-f", "{{.Size}}", tag]).stdout) for t, tag in result.images.items()}
        print("built " + ", ".join(f"{t} in {result.seconds[t]:.0f} s ({sizes[t] / 1e9:.2f} GB)" for t in TARGETS))
        yield result
    finally:
        remove_built(result)


# ---- no secrets in any layer --------------------------------------------------------------------------

SECRET_PATH = re.compile(
    r"(^|/)(identity\.pem|p2p\.key|dht\.pem|ledger\.sqlite[^/]*|run\.json|coordinator\.json|\.env|\.netrc|"
    r"\.pypirc|\.git-credentials|\.dockercfg|config\.json|token|cairn-swarm)$|(^|/)keys/[^/]+\.pem$|\.key$"
)
# a PEM block with a body, not the bare marker a library keeps as a constant (cryptography's ssh.py does)
PRIVATE_KEY = re.compile(rb"-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY-----\s*(?:[A-Za-z0-9+/=:,-]+\s*){2,}-----END ([A-Z0-9]+ )*PRIVATE KEY-----")
CREDENTIAL = re.compile(r"(://[^/\s:@]+:[^/\s@]+@|(TOKEN|SECRET|PASSWORD|API_KEY)[A-Z_]*=\S)", re.IGNORECASE)
# files of Debian and third-party packages whose names match SECRET_PATH and hold no secret of ours
SECRET_PATH_ALLOWED = re.compile(r"^(usr/|etc/(ssl|ca-certificates)|opt/venv/lib/python3\.11/site-packages/(?!cairn/))")


def test_no_secret_in_any_layer(built):
    started = time.monotonic()
    tags = list(built.images.values())
    findings: list[str] = []
    files = 0
    save = subprocess.Popen(["docker", "save", *tags], stdout=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=save.stdout, mode="r|") as outer:
            for member in outer:
                if not member.name.endswith("layer.tar"):
                    continue
                with tarfile.open(fileobj=outer.extractfile(member), mode="r|") as layer:
                    for item in layer:
                        files += 1
                        name = item.name.removeprefix("./")
                        base = Path(name).name.removeprefix(".wh.")  # a whiteout names what a later layer deleted
                        if SECRET_PATH.search(str(Path(name).parent / base)) and not SECRET_PATH_ALLOWED.match(name):
                            findings.append(f"{member.name}: {name}")
                        if item.isfile() and item.size <= 256 << 10 and not name.endswith((".so", ".pyc")):
                            if PRIVATE_KEY.search(layer.extractfile(item).read()):
                                findings.append(f"{member.name}: {name} holds a private key")
    finally:
        save.stdout.close()
        assert save.wait(timeout=300) == 0, "docker save failed"
    assert files > 10_000, f"read only {files} files from the layers"
    for tag in tags:
        config = json.loads(_run(["docker", "image", "inspect", tag]).stdout)[0]["Config"]
        findings += [f"{tag}: ENV {e}" for e in config.get("Env") or [] if CREDENTIAL.search(e)]
        history = _run(["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", tag]).stdout.splitlines()
        findings += [f"{tag}: history {h[:200]}" for h in history if CREDENTIAL.search(h)]
    print(f"\nread {files} files of every layer in {time.monotonic() - started:.0f} s")
    assert not findings, "secrets in the images:\n" + "\n".join(findings[:40])


# ---- the compose network ------------------------------------------------------------------------------

INIT_ARGS = (
    "--run-id compose-e2e --corpus wordnet --averaging diloco --outer-every 4 --shards 4 --lease-seconds 8 --averaging-timeout 10 "
    "--target-batch-size 128 --batch-size 32 --compat-weight 0 --initialisation random --landmarks 64 "
    "--no-outside-reference"
)  # as `run` below: no reference encoder or yardstick (~66 s of CPU at init)
RELEASE_EVERY = 3


def compose_file_for(tmp_path: Path, built: Built) -> tuple[Path, dict[str, int]]:
    """docker/compose.yaml with the test's images, volumes and loopback ports, and a swarm sized to finish fast."""
    document = yaml.safe_load(COMPOSE.read_text())
    ports: dict[str, int] = {}
    for name, service in list(document["services"].items()):
        if service.get("profiles"):
            del document["services"][name]
            continue
        target = service["build"]["target"]
        del service["build"]  # built above, with the same Dockerfile and build arguments
        service["image"] = built.images[target]
        published = []
        for entry in service.get("ports", []):
            container = int(str(entry).split(":")[-1])
            ports[container] = free_port()
            published.append(f"127.0.0.1:{ports[container]}:{container}")  # loopback only
        if published:
            service["ports"] = published
        # the image's HEALTHCHECK command (asserted below), probed every 5 s instead of every 15-30 s: the test waits
        # on health three times (peers start once the coordinator is healthy), up to an interval each time
        service["healthcheck"] = {"interval": "5s"}
        if target == "coordinator":
            service["environment"]["CAIRN_INIT_ARGS"] = INIT_ARGS
            service["command"] = ["run", "--release-every", str(RELEASE_EVERY), "--spot-check-seconds", "5", "--no-outside-reference"]
    for volume, spec in document["volumes"].items():
        spec["name"] = f"{built.project}_{volume}"
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path, ports


@dataclass
class Network:
    compose: list[str]
    file: Path
    project: str
    ports: dict[str, int]
    log: Path

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return _run([*self.compose, "-p", self.project, "-f", str(self.file), *args], timeout=timeout)

    def containers(self) -> dict[str, dict]:
        ids = self("ps", "-q").stdout.split()
        found = {}
        for state in json.loads(_run(["docker", "inspect", *ids]).stdout) if ids else []:
            found[state["Config"]["Labels"]["com.docker.compose.service"]] = state
        return found

    def volume(self, name: str) -> Path:
        return Path(_run(["docker", "volume", "inspect", "-f", "{{.Mountpoint}}", f"{self.project}_{name}"]).stdout.strip())

    def logs(self) -> str:
        result = subprocess.run(
            [*self.compose, "-p", self.project, "-f", str(self.file), "logs", "--no-color", "--tail", "40"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.log.write_text(result.stdout + result.stderr)
        return (result.stdout + result.stderr)[-6000:]

    def wait(self, what: str, predicate, timeout: float, interval: float = 2.0):
        return wait_for(predicate, timeout, interval, what, details=self.logs)

    def all_healthy(self, services: set[str]) -> bool:
        found = self.containers()
        for name, state in found.items():
            if state["State"]["Status"] in ("exited", "dead") or state["State"]["Restarting"]:
                pytest.fail(f"{name} stopped (exit code {state['State']['ExitCode']}) before it was healthy\n{self.logs()}")
        return set(found) >= services and all(found[s]["State"].get("Health", {}).get("Status") == "healthy" for s in services)


def ledger(path: Path, query: str) -> list[tuple]:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    except sqlite3.OperationalError:  # not there yet
        return []
    try:
        return db.execute(query).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_compose_network_end_to_end(built: Built, tmp_path: Path):
    file, ports = compose_file_for(tmp_path, built)
    net = Network(compose_command(), file, built.project, ports, tmp_path / "compose.log")
    services = set(yaml.safe_load(file.read_text())["services"])
    assert services == {"coordinator", "dashboard", "peer-1", "peer-2"}
    url = f"http://127.0.0.1:{ports[8700]}"
    env = {**os.environ, "CAIRN_CACHE_DIR": str(tmp_path / "host-cache")}  # this machine's pinned roots stay untouched
    timings: dict[str, float] = {}
    started = time.monotonic()
    try:
        net("up", "-d", "--no-build", timeout=START_TIMEOUT)  # waits for the coordinator's health (peers depend on it)
        net.wait("every container to be healthy", lambda: net.all_healthy(services), START_TIMEOUT, 3)
        timings["healthy"] = time.monotonic() - started
        coordinator_dir = net.volume("coordinator")
        for name, state in net.containers().items():
            assert state["Config"]["Healthcheck"]["Test"][0] == "CMD", f"{name}: the image's HEALTHCHECK is in force"
            assert state["HostConfig"]["ReadonlyRootfs"], f"{name}: the root filesystem is read-only"
            assert state["Config"]["User"] not in ("", "0", "root"), f"{name} runs as root"

        # a release cut from the swarm's training, signed, pulled and verified from the host with the root copied out of band
        def trained_release():
            rows = ledger(Workdir(coordinator_dir).ledger, "SELECT version, global_step FROM releases WHERE global_step > 0")
            return rows[-1] if rows else None

        version, step = net.wait("a release cut from training", trained_release, START_TIMEOUT, 3)
        timings["release"] = time.monotonic() - started
        root = tmp_path / "1.root.json"
        shutil.copy(coordinator_dir / "repository" / "metadata" / "1.root.json", root)
        pulled = _run(
            cairn("release", "pull", url, "--version", version, "--to", str(tmp_path / "release"), "--root", str(root)),
            timeout=300,
            env=env,
        )
        assert f"installed release {version}" in pulled.stdout
        verified = _run(cairn("release", "verify", str(tmp_path / "release"), "--root", str(root)), timeout=300, env=env)
        assert verified.stdout.startswith(f"ok: release {version}")

        # SIGTERM: every process leaves cleanly within the grace period, nothing is killed
        before = net.containers()
        join = CoordinatorState.load(Workdir(coordinator_dir).state_file).join
        for name in ("peer-1", "peer-2", "dashboard", "coordinator"):
            stop_started = time.monotonic()
            _run(["docker", "stop", "--time", str(GRACE_SECONDS), before[name]["Id"]], timeout=GRACE_SECONDS + 60)
            elapsed = time.monotonic() - stop_started
            state = json.loads(_run(["docker", "inspect", before[name]["Id"]]).stdout)[0]["State"]
            assert elapsed < GRACE_SECONDS and state["ExitCode"] in (0, 143) and not state["OOMKilled"], (
                f"{name}: exit code {state['ExitCode']} after {elapsed:.0f} s of a {GRACE_SECONDS} s grace period\n{net.logs()}"
            )
            timings[f"stop {name}"] = elapsed
        releases = ledger(Workdir(coordinator_dir).ledger, "SELECT version, global_step, manifest_json FROM releases ORDER BY version")
        records = ledger(Workdir(coordinator_dir).ledger, "SELECT COUNT(*) FROM records")[0][0]
        repository = digests(coordinator_dir / "repository" / "targets")
        identities = {p: hashlib.sha256((net.volume(p) / "identity.pem").read_bytes()).hexdigest() for p in ("peer-1", "peer-2")}
        assert (version, step) in [(v, s) for v, s, _ in releases] and records > 0 and repository

        # restart: the same volumes, the same run
        restarted = time.monotonic()
        net("up", "-d", "--no-build", timeout=START_TIMEOUT)
        net.wait("every container to be healthy again", lambda: net.all_healthy(services), START_TIMEOUT, 3)
        timings["healthy again"] = time.monotonic() - restarted
        assert (
            ledger(Workdir(coordinator_dir).ledger, "SELECT version, global_step, manifest_json FROM releases ORDER BY version")[
                : len(releases)
            ]
            == releases
        )
        assert ledger(Workdir(coordinator_dir).ledger, "SELECT COUNT(*) FROM records")[0][0] >= records
        after = digests(coordinator_dir / "repository" / "targets")
        assert {k: after.get(k) for k in repository} == repository, "a signed release file changed across the restart"
        assert CoordinatorState.load(Workdir(coordinator_dir).state_file).join == join, "the join address changed"
        assert {p: hashlib.sha256((net.volume(p) / "identity.pem").read_bytes()).hexdigest() for p in identities} == identities
        listed = _run(cairn("release", "list", url, "--root", str(root)), timeout=120, env=env).stdout
        assert version in listed
    finally:
        down = subprocess.run(
            [*net.compose, "-p", net.project, "-f", str(file), "down", "--volumes", "--remove-orphans", "--timeout", "10"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        timings["total"] = time.monotonic() - started
        print("\ncompose network: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    assert down.returncode == 0, down.stderr
    left = _run(["docker", "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={net.project}"]).stdout.split()
    volumes = _run(["docker", "volume", "ls", "-q", "--filter", f"name={net.project}_"]).stdout.split()
    networks = _run(["docker", "network", "ls", "-q", "--filter", f"name={net.project}_"]).stdout.split()
    assert not left and not volumes and not networks, f"left behind: {left} {volumes} {networks}"
