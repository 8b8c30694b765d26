"""The three CPU images tests/test_docker_e2e.py runs, built on a real Docker engine where Docker Hub and the
PyTorch index cannot be reached: a Debian base from Debian's packages (docker/make-base.sh, only if no base
image is there yet) and a one-file package index on loopback serving the CPU torch wheel of pip's find-links
directory (else the Dockerfile's public default index). Images get names of their own; `remove_built` removes
exactly what a build created: the images, their intermediate layers, the base if it made it.

Building takes about 4 of the suite's minutes, mostly pip downloading and unpacking, so CI builds ahead:
scripts/test.sh (with no pytest arguments, as .ci/run calls it) starts `python tests/docker_build.py --state FILE`
in the background at nice 19 (and `--cpu-shares 2` for the build's containers, which run under dockerd) while ruff,
mypy and the unit tests run, and exports CAIRN_PREBUILT_IMAGES=FILE
and CAIRN_PREBUILT_PID; the e2e module adopts the images FILE names (`adopt_prebuilt`) and removes them at its
end; test.sh removes them too (`--remove FILE`) if the module never ran. Without the variables the module
builds for itself, as before.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("coordinator", "dashboard", "peer")
BASE_IMAGE = os.environ.get("CAIRN_BASE_IMAGE", "cairn-local/debian:bookworm")
BUILD_TIMEOUT = 1200


class BuildError(RuntimeError):
    """The images could not be built (the message says which step and why)."""


class CannotBuild(RuntimeError):
    """Nothing to build with here (no base image and no debootstrap): the container tests skip."""


def torch_pin() -> str:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d.split("==")[1].split(";")[0].strip() for d in dependencies if re.match(r"torch\s*==", d))


def local_torch_wheel() -> Path | None:
    """The CPU torch wheel in pip's find-links directories (how the project's machines install it), if any."""
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False).stdout
    places = [*os.environ.get("PIP_FIND_LINKS", "").split()]
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            places += value.strip().strip("'\"").split()
    for place in places:
        folder = Path(place.removeprefix("file://"))
        found = sorted(folder.glob(f"torch-{torch_pin()}+cpu-cp311-cp311-*linux*_x86_64.whl")) if folder.is_dir() else []
        if found:
            return found[-1]
    return None


class _WheelIndex(http.server.ThreadingHTTPServer):
    """A PEP 503 simple index on 127.0.0.1 with one project (torch) and one file."""

    def __init__(self, wheel: Path):
        self.wheel = wheel
        super().__init__(("127.0.0.1", 0), _WheelHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class _WheelHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the http.server API)
        wheel = self.server.wheel
        quoted = wheel.name.replace("+", "%2B")
        if self.path.rstrip("/") == "/torch":
            body = f'<html><body><a href="/files/{quoted}">{wheel.name}</a></body></html>'.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == f"/files/{quoted}":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(wheel.stat().st_size))
            self.end_headers()
            with open(wheel, "rb") as handle:
                shutil.copyfileobj(handle, self.wfile)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


# ---- the images ---------------------------------------------------------------------------------------


def image_ids() -> set[str]:
    listing = subprocess.run(
        ["docker", "images", "--all", "--quiet", "--no-trunc"], capture_output=True, text=True, timeout=120, check=False
    )
    if listing.returncode != 0:
        raise BuildError(f"docker images failed: {listing.stderr.strip()[-300:]}")
    return set(listing.stdout.split())


def image_exists(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True, check=False).returncode == 0


@dataclass
class Built:
    project: str
    images: dict[str, str]  # target -> tag
    seconds: dict[str, float] = field(default_factory=dict)
    before: list[str] = field(default_factory=list)  # the image ids there before the build: never removed
    made_base: bool = False


def remove_images(ids: set[str]) -> None:
    """Remove these image ids, children before parents (what a build left: tagged images, intermediate layers)."""
    pending = set(ids)
    for _ in range(len(pending) + 1):
        if not pending:
            return
        existing = pending & image_ids()
        if not existing:
            return
        for image in sorted(existing):
            if subprocess.run(["docker", "rmi", "--force", image], capture_output=True, check=False).returncode == 0:
                pending.discard(image)
        pending &= image_ids()


def build_images(log=print, cpu_shares: int | None = None) -> Built:
    """Make the base if missing, serve the torch wheel on loopback, build the three targets under a fresh project name.

    `cpu_shares`: the relative CPU weight of the build's RUN containers (docker build --cpu-shares; 1024 is the default).
    They run under dockerd, not under the caller, so `nice` does not reach them; the background build sets 2."""
    project = f"cairn-e2e-{secrets.token_hex(4)}"
    result = Built(project, {target: f"{project}/{target}:0.1.0" for target in TARGETS}, before=sorted(image_ids()))
    index = None
    try:
        if not image_exists(BASE_IMAGE):
            if shutil.which("debootstrap") is None:
                raise CannotBuild(
                    f"no base image {BASE_IMAGE} and no debootstrap to make one "
                    f"(apt-get install debootstrap, or `bash scripts/docker-engine.sh`)"
                )
            started = time.monotonic()
            made = subprocess.run(
                ["bash", str(ROOT / "docker" / "make-base.sh"), BASE_IMAGE], capture_output=True, text=True, timeout=900, check=False
            )
            if made.returncode != 0:
                raise BuildError(f"docker/make-base.sh failed: {(made.stderr or made.stdout)[-3000:]}")
            result.made_base = True
            log(f"base image {BASE_IMAGE}: made in {time.monotonic() - started:.0f} s")
        wheel = local_torch_wheel()
        torch_index = "https://download.pytorch.org/whl/cpu"
        if wheel is not None:
            index = _WheelIndex(wheel)
            threading.Thread(target=index.serve_forever, daemon=True).start()
            torch_index = index.url
        env = {**os.environ, "DOCKER_BUILDKIT": "0"}  # the builder every engine has; compose v1 uses it too
        for target, tag in result.images.items():
            started = time.monotonic()
            weight = ["--cpu-shares", str(cpu_shares)] if cpu_shares is not None else []
            build = subprocess.run(
                [
                    "docker",
                    "build",
                    "--force-rm",
                    "--network",
                    "host",
                    *weight,
                    "-f",
                    "docker/Dockerfile",
                    "--target",
                    target,
                    "--build-arg",
                    f"BASE_IMAGE={BASE_IMAGE}",
                    "--build-arg",
                    f"TORCH_INDEX_URL={torch_index}",
                    "-t",
                    tag,
                    ".",
                ],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT,
                check=False,
            )
            if build.returncode != 0:
                raise BuildError(f"docker build --target {target} failed:\n{(build.stdout + build.stderr)[-4000:]}")
            result.seconds[target] = time.monotonic() - started
    except BaseException:
        remove_built(result)
        raise
    finally:
        if index is not None:
            index.shutdown()
            index.server_close()
    return result


def remove_built(built: Built) -> None:
    """Remove what this build created: the images made since it started that were built on the base (the tagged
    images, the intermediate images of their builds, those of a failed build), and the base if it made it; an image
    built meanwhile from anything else stays."""
    base = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", BASE_IMAGE], capture_output=True, text=True, check=False
    ).stdout.strip()
    ours = set()
    for image in image_ids() - set(built.before):
        chain = subprocess.run(["docker", "history", "-q", "--no-trunc", image], capture_output=True, text=True, check=False).stdout.split()
        if base and base in chain:
            ours.add(image)
    remove_images(ours)
    if built.made_base:
        subprocess.run(["docker", "rmi", BASE_IMAGE], capture_output=True, check=False)


def adopt_prebuilt(state: Path, pid: int | None, timeout: float = BUILD_TIMEOUT) -> Built:
    """The images the background build (scripts/test.sh) wrote to `state`, once it has finished; its failure or skip
    is raised here as the test module's own."""
    deadline = time.monotonic() + timeout
    while not state.exists():
        if pid is not None and not _alive(pid):
            time.sleep(1)  # it may have written the file just before exiting
            if not state.exists():
                raise BuildError(f"the background image build (pid {pid}) exited without a result; its log is next to {state}")
        if time.monotonic() > deadline:
            raise BuildError(f"the background image build wrote no result to {state} within {timeout:.0f} s")
        time.sleep(2)
    document = json.loads(state.read_text())
    if "skip" in document:
        raise CannotBuild(document["skip"])
    if "error" in document:
        raise BuildError(document["error"])
    return Built(**document["built"])


def _alive(pid: int) -> bool:
    """The process runs (a zombie, exited but not yet reaped by test.sh's shell, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _write(state: Path, document: dict) -> None:
    temporary = state.with_suffix(".tmp")
    temporary.write_text(json.dumps(document))
    os.replace(temporary, state)  # the test never reads half a file


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, required=True, help="where the result goes (JSON, written once, atomically)")
    parser.add_argument("--remove", action="store_true", help="remove what the build in --state made, if still there")
    args = parser.parse_args()
    if args.remove:
        if args.state.exists() and "built" in (document := json.loads(args.state.read_text())):
            remove_built(Built(**document["built"]))
        return 0
    os.setpgid(0, 0)  # a process group of its own, so scripts/test.sh can stop the build with its docker client
    try:
        built = build_images(log=lambda line: print(line, flush=True), cpu_shares=2)  # the tests first
    except CannotBuild as reason:
        _write(args.state, {"skip": str(reason)})
        return 0
    except Exception as error:  # noqa: BLE001 (any failure is the test module's to report)
        _write(args.state, {"error": f"{type(error).__name__}: {error}"})
        return 1
    _write(args.state, {"built": asdict(built)})
    print("built " + ", ".join(f"{t} in {s:.0f} s" for t, s in built.seconds.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
