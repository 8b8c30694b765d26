#!/usr/bin/env bash
# The README's test command: install everything (tests included) and run the whole suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"` for a quick pass.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test

# The whole suite (no arguments, as CI runs it) with a Docker engine: build the container images in the background,
# at the lowest priority, while ruff, mypy and the unit tests run; tests/test_docker_e2e.py (run last) adopts them.
# The build is mostly pip downloading and unpacking: about 4 minutes the suite no longer waits for.
prebuild_pid=""
if [ "$#" -eq 0 ] && docker info >/dev/null 2>&1; then
  prebuild_dir="$(mktemp -d /tmp/cairn-prebuild.XXXXXX)"
  export CAIRN_PREBUILT_IMAGES="$prebuild_dir/images.json"
  nice -n 19 .venv/bin/python tests/docker_build.py --state "$CAIRN_PREBUILT_IMAGES" >"$prebuild_dir/build.log" 2>&1 &
  prebuild_pid=$!
  export CAIRN_PREBUILT_PID="$prebuild_pid"
  echo "building the container images in the background (log: $prebuild_dir/build.log)"
fi
finish() {
  if [ -n "$prebuild_pid" ]; then
    kill -- "-$prebuild_pid" 2>/dev/null && { wait "$prebuild_pid" 2>/dev/null || true; }  # its process group: docker too
    .venv/bin/python tests/docker_build.py --state "$CAIRN_PREBUILT_IMAGES" --remove || true  # if the e2e module never ran
    rm -rf "$prebuild_dir"
  fi
}
trap finish EXIT

.venv/bin/ruff check cairn tests bench scripts
.venv/bin/ruff format --check cairn tests bench scripts
.venv/bin/mypy   # the files [tool.mypy] in pyproject.toml lists
.venv/bin/python -m pytest -q --durations=20 "$@"
