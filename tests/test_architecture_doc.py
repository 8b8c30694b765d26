"""docs/architecture.md is the newcomer's map (issue 16): every file or folder its tables name must exist, so a move
or a rename that forgets the map fails here instead of misleading the next reader."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
# a backticked path: a known top-level folder, or a module of a folder the same cell has just named
_PATH = re.compile(r"`((?:cairn|tests|bench|scripts|docs|docker)/[\w./-]*|[\w/-]+\.(?:py|proto|md|sh|html))`")


def _table_rows(heading: str) -> list[str]:
    text = DOC.read_text()
    start = text.index(f"{heading}\n")
    end = text.find("\n## ", start + 1)
    return [line for line in text[start : end if end != -1 else None].splitlines() if line.startswith("| ") and "---" not in line]


def _resolve(name: str, folders: list[Path]) -> bool:
    """A full path from the root, or a bare module relative to a folder named earlier in the same row."""
    if (ROOT / name).exists():
        return True
    return any((folder / name).exists() for folder in folders) or any(
        path.exists() for path in (ROOT / "cairn" / name, ROOT / "cairn" / "protocol" / name)
    )


def test_every_path_in_the_where_a_change_goes_table_exists():
    missing = []
    rows = _table_rows("## Where a change goes")
    assert len(rows) > 8, rows  # the header and the rows of the table
    for row in rows[1:]:
        folders: list[Path] = []
        for name in _PATH.findall(row):
            path = ROOT / name
            if path.is_dir() or path.parent.is_dir() and name.startswith("cairn/"):
                folders.append(path if path.is_dir() else path.parent)
            if not _resolve(name, folders):
                missing.append((name, row[:60]))
    assert missing == [], missing


def test_every_folder_of_the_layout_table_exists_and_every_package_folder_is_in_it():
    rows = _table_rows("# Architecture")
    named = {m.group(1).rstrip("/") for row in rows for m in [re.match(r"\| `(cairn/[\w]+)/?`", row)] if m}
    packages = {f"cairn/{p.name}" for p in (ROOT / "cairn").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert named == packages, (sorted(named - packages), sorted(packages - named))
