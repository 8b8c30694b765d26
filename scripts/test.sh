#!/usr/bin/env bash
# The README's test command: install everything (tests included) and run the whole suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"` for a quick pass.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
.venv/bin/ruff check cairn tests bench scripts
.venv/bin/mypy   # the files [tool.mypy] in pyproject.toml lists
exec .venv/bin/python -m pytest -q --durations=20 "$@"
