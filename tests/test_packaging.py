"""The distribution as pip builds it: one top-level package with its data files, and a core that works alone.

The wheel is built from a copy of the sources (pyproject.toml, README.md, cairn/) with the venv's setuptools,
no network. A core-only install is imitated, not made: this machine has no index to install the core
dependencies into a fresh venv from, so the wheel is installed with `pip --target` into a directory that goes
first on PYTHONPATH (the test checks `cairn` is imported from there, not from the checkout), and
`tests/core_only/sitecustomize.py` makes every package that only the extras install (read from the wheel's
own metadata) fail to import exactly as a missing one does. What this cannot catch: a core dependency that
is installed here but not declared; `tests/test_cli.py`-style greps and review cover that.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from cairn.extras import EXTRA_MODULES

REPO = Path(__file__).resolve().parent.parent
BLOCKER = Path(__file__).resolve().parent / "core_only"
NAME = "cairn-net"


# ---- what pyproject.toml declares -----------------------------------------------------------


@functools.cache
def _distribution_modules() -> dict[str, frozenset[str]]:
    """Installed distribution (normalised name) -> the top-level modules it provides (protobuf -> google)."""
    provided: dict[str, set[str]] = {}
    for module, names in importlib.metadata.packages_distributions().items():
        for name in names:
            provided.setdefault(name.lower().replace("_", "-"), set()).add(module)
    return {name: frozenset(modules) for name, modules in provided.items()}


def _modules_of(distribution: str) -> set[str]:
    return set(_distribution_modules().get(distribution.lower().replace("_", "-"), ()))


def _extra_distributions(project: dict, extra: str) -> set[str]:
    """The distributions `pip install cairn-net[extra]` adds, following cairn-net[...] self-references."""
    names: set[str] = set()
    for line in project["optional-dependencies"][extra]:
        requirement = Requirement(line)
        if requirement.name == NAME:
            for inner in requirement.extras:
                names |= _extra_distributions(project, inner)
        else:
            names.add(requirement.name)
    return names


def _core_modules(project: dict) -> set[str]:
    return set().union(*(_modules_of(Requirement(line).name) for line in project["dependencies"]))


def extra_only_modules() -> dict[str, set[str]]:
    """extra -> the top-level modules it installs that the core does not."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = _core_modules(project)
    return {
        extra: set().union(*(_modules_of(name) for name in _extra_distributions(project, extra))) - core
        for extra in project["optional-dependencies"]
    }


def test_the_extras_table_matches_pyproject():
    """cairn/extras.py names the extra of a missing module; it must say what pip would install."""
    declared = extra_only_modules()
    for extra, modules in EXTRA_MODULES.items():
        assert modules == declared[extra], f"cairn/extras.py's {extra} differs from pyproject.toml's"
    assert not {"hivemind", "bitsandbytes", "datasets", "aiohttp", "jinja2"} & _core_modules(
        tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    ), "the core stays small"


# ---- the wheel ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "cairn", source / "cairn", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("cairn_net-*.whl")
    return built


def _source_files() -> set[str]:
    return {
        path.relative_to(REPO).as_posix()
        for path in (REPO / "cairn").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def test_the_wheel_is_one_package_with_all_its_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {name.split("/")[0] for name in names} == {"cairn", "cairn_net-0.1.0.dist-info"}, "one top-level package"
    packaged = {name for name in names if name.startswith("cairn/")}
    assert packaged == _source_files(), f"missing {sorted(_source_files() - packaged)}, extra {sorted(packaged - _source_files())}"
    for needed in (
        "cairn/dashboard/static/favicon.svg",
        "cairn/protocol/proto/cairn.proto",
        "cairn/protocol/proto/cairn_pb2.py",
        "cairn/protocol/vocab/bert-base-uncased.txt",
    ):
        assert needed in packaged, needed
    assert any(name.startswith("cairn/dashboard/templates/") and name.endswith(".html") for name in packaged)


# ---- a core-only install --------------------------------------------------------------------


def core_only_env(target: Path) -> dict[str, str]:
    blocked = set().union(*extra_only_modules().values())
    return {
        **os.environ,
        "PYTHONPATH": f"{BLOCKER}{os.pathsep}{target}",
        "CAIRN_BLOCKED_MODULES": ",".join(sorted(blocked)),
        "OMP_NUM_THREADS": "1",
    }


def run_core(target: Path, *args: str | Path, python: bool = False) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", args[0]] if python else [str(target / "bin" / "cairn"), *map(str, args)]
    # cwd: `python -c` puts the working directory first on sys.path, which would find the checkout's cairn/
    return subprocess.run(command, env=core_only_env(target), cwd=target, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("core-install")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def test_the_imitated_install_is_the_wheel_without_the_extras(installed):
    where = run_core(installed, "import cairn; print(cairn.__file__)", python=True)
    assert where.stdout.strip() == str(installed / "cairn" / "__init__.py"), where.stderr
    for module in ("hivemind", "aiohttp", "datasets", "jinja2", "bitsandbytes"):
        refused = run_core(installed, f"import {module}", python=True)
        assert refused.returncode != 0 and "ModuleNotFoundError" in refused.stderr, module


def test_a_role_without_its_extra_is_one_line(installed):
    listed = run_core(installed, "--help")
    assert listed.returncode == 0 and "peer" in listed.stdout and "dashboard" in listed.stdout, listed.stderr
    refused = run_core(installed, "peer", "run", "--join", "/ip4/127.0.0.1/tcp/1/p2p/QmNotUsed", "--workdir", installed / "peer")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == "error: cairn peer needs the peer extra: pip install 'cairn-net[peer]'\n"
    served = run_core(installed, "index", "serve", installed / "no-index")
    assert (
        served.returncode == 2
        and served.stderr == "error: cairn index needs aiohttp, from the serve extra: pip install 'cairn-net[serve]'\n"
    )


@pytest.mark.slow
def test_core_only_install_pulls_verifies_embeds_and_searches(installed, tmp_path):
    from test_releases import serve
    from test_tasks import make_release

    from cairn.coordinator.publishing.repository import ReleaseRepository
    from cairn.coordinator.publishing.server import make_repository_app
    from cairn.protocol.embedder import load_bundle
    from cairn.protocol.run_config import TrainingConfig
    from cairn.training.trainer import train

    words = ["fox", "dog", "cat", "river", "castle", "engine", "rocket", "garden", "owl", "pump"]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"a": f"{a} {w}", "b": f"a {w} that is {a}"}) + "\n" for w in words for a in ["red", "old", "tiny"])
    )
    config = TrainingConfig(
        landmarks=16, reference_size=24, batch_size=8, objective=replace(TrainingConfig().objective, prefix_dims=(4, 8, 16))
    )
    train(f"jsonl:{pairs}", tmp_path / "bundle", config, max_samples=24, device="cpu", evaluate=False, show_progress=False)
    repository = ReleaseRepository(tmp_path / "coordinator")
    repository.init()
    repository.publish_release(make_release(tmp_path / "bundle", tmp_path / "release", "1.0.0"))
    root = tmp_path / "root.json"
    root.write_bytes((repository.metadata_dir / "1.root.json").read_bytes())
    cache = ["--cache-dir", tmp_path / "cache"]

    with serve(make_repository_app(repository.repository_dir)) as url:
        pulled = run_core(installed, "release", "pull", url, "--root", root, "--to", tmp_path / "installed", *cache)
    assert pulled.returncode == 0 and "installed release 1.0.0" in pulled.stdout, pulled.stderr
    verified = run_core(installed, "release", "verify", tmp_path / "installed", *cache)
    assert verified.returncode == 0 and "ok: release 1.0.0" in verified.stdout, verified.stderr

    embedded = run_core(installed, "embed", "--release", tmp_path / "installed", *cache, "a red fox", "an old castle")
    assert embedded.returncode == 0, embedded.stderr
    vectors = [json.loads(line)["embedding"] for line in embedded.stdout.splitlines()]
    expected = load_bundle(tmp_path / "bundle", "cpu").embed(["a red fox", "an old castle"], None)
    assert len(vectors) == 2 and all(abs(a - b) < 1e-5 for row, want in zip(vectors, expected) for a, b in zip(row, want))

    docs = tmp_path / "docs.txt"
    docs.write_text("".join(f"the {a} {w}\n" for w in words for a in ["red", "old"]))
    built = run_core(
        installed, "index", "build", "--release", tmp_path / "installed", "--data", docs, "--out", tmp_path / "idx", "--coarse-dims", "8"
    )
    assert built.returncode == 0, built.stderr
    found = run_core(installed, "index", "search", tmp_path / "idx", "the red fox", "-k", "1")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["hits"][0]["text"] == "the red fox"
