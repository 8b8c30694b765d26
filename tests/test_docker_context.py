"""Containers beyond the engine the images were written for (issue 18, item 8), checked without Docker:
the legacy builder reads only a root .dockerignore, and docker-compose v1 refuses a top-level `name:`."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _patterns(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.strip().startswith("#")]


def test_the_legacy_builder_gets_the_same_allow_list_as_buildkit():
    """Without buildx, docker/Dockerfile.dockerignore is ignored: a 2.1 GB context with .venv and cairn-swarm/ (its
    private keys) reached the builder. The root .dockerignore is what that builder reads."""
    root = _patterns(ROOT / ".dockerignore")
    assert root[0] == "*" and {"**/*.pem", "**/*.key", "**/*.sqlite*"} <= set(root)
    for name in ("Dockerfile", "Dockerfile.cuda"):
        assert _patterns(ROOT / "docker" / f"{name}.dockerignore") == root, f"{name}.dockerignore and .dockerignore differ"


def test_compose_file_is_accepted_by_compose_v1():
    document = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    # docker-compose 1.29 (Debian's): the top level may hold only these (and x- extension fields)
    assert {key for key in document if not key.startswith("x-")} <= {"version", "services", "volumes", "networks", "configs", "secrets"}
    # without a project name in the file, named volumes keep their data's names under any project name
    assert all(isinstance(spec, dict) and spec.get("name") == f"cairn_{volume}" for volume, spec in document["volumes"].items())
