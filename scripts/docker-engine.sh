#!/usr/bin/env bash
# Make a Docker engine answer on this machine, for tests/test_docker_e2e.py (CI runs this from .ci/run).
#   bash scripts/docker-engine.sh     install docker.io, docker-compose and debootstrap with apt if missing,
#                                      start dockerd if no engine answers; idempotent
# Never fails: where no engine can run (not root, no apt, dockerd refuses to start) it says why in one
# line and exits 0, and the container tests skip with their own line. When it started dockerd itself it
# prints "started dockerd PID" on stdout (the pid is also in /run/cairn-dockerd.pid), so a caller can stop it.
set -uo pipefail
say() { echo "docker-engine: $*" >&2; }

if docker info >/dev/null 2>&1; then say "an engine already answers"; exit 0; fi
if [ "$(id -u)" != 0 ]; then say "no engine answers and not root: not installing one (container tests will skip)"; exit 0; fi

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then say "no apt-get to install ${missing[*]} (container tests will skip)"; exit 0; fi
  say "installing ${missing[*]}"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >/tmp/cairn-docker-apt.log 2>&1; then
    say "apt-get install ${missing[*]} failed (see /tmp/cairn-docker-apt.log; container tests will skip)"; exit 0
  fi
fi
command -v dockerd >/dev/null || { say "no dockerd after installing docker.io (container tests will skip)"; exit 0; }

log=/var/log/cairn-dockerd.log
setsid dockerd >"$log" 2>&1 </dev/null &
pid=$!
for _ in $(seq 60); do
  if docker info >/dev/null 2>&1; then
    echo "$pid" >/run/cairn-dockerd.pid
    echo "started dockerd $pid"
    exit 0
  fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 1
done
say "dockerd did not start: $(tail -n 1 "$log" 2>/dev/null) (container tests will skip)"
kill "$pid" 2>/dev/null
exit 0
