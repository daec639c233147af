#!/usr/bin/env bash
# Create .venv/ in the repository root with the exact versions of requirements.lock, and install ticketbench.
# Idempotent: a second run only checks. Usage: scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Python 3.11 or 3.12 (pyproject's requires-python; the lock's markers cover both): $PYTHON if set, else the
# first of python3.11 (what CI and the image use), python3.12 and python3 that runs and has venv.
if [ -n "${PYTHON:-}" ]; then candidates=("$PYTHON"); else candidates=(python3.11 python3.12 python3); fi
PY=
for candidate in "${candidates[@]}"; do
  if "$candidate" -c 'import sys, venv; assert sys.version_info[:2] in ((3, 11), (3, 12))' 2>/dev/null; then
    PY=$candidate
    break
  fi
done
if [ -z "$PY" ]; then
  echo "setup: needs Python 3.11 or 3.12 with venv (Debian/Ubuntu: apt-get install python3.12-venv, or" \
       "python3.11-venv; macOS: python.org or Homebrew)${PYTHON:+; PYTHON=$PYTHON is not one}" >&2
  exit 1
fi

# sha256sum: GNU coreutils; shasum: what macOS has. Same output.
sha256() { if command -v sha256sum >/dev/null; then sha256sum "$@"; else shasum -a 256 "$@"; fi; }
stamp=.venv/.installed-$(sha256 requirements.lock pyproject.toml | sha256 | cut -c1-16)
if [ -f "$stamp" ]; then
  echo "setup: .venv is up to date with requirements.lock"
else
  if [ -x .venv/bin/python ]; then
    echo "setup: updating .venv (Python $(.venv/bin/python -c 'import platform; print(platform.python_version())'))"
  else
    echo "setup: making .venv with $PY (Python $("$PY" -c 'import platform; print(platform.python_version())'))"
    "$PY" -m venv .venv
  fi
  .venv/bin/python -m pip install --quiet "uv==0.13.9"
  # Use this machine's pip sources (a local mirror or wheel cache) if pip is configured with any; uv does
  # not read pip's configuration. On a plain machine both are empty and uv uses PyPI.
  args=()
  FL=$(.venv/bin/python -m pip config get global.find-links 2>/dev/null || true)
  XI=$(.venv/bin/python -m pip config get global.extra-index-url 2>/dev/null || true)
  [ -n "$FL" ] && args+=(--find-links "$FL")
  for u in $XI; do args+=(--extra-index-url "$u"); done
  # With extra indexes, uv by default takes a package only from the first index that has it; pick the best
  # match across all of them as pip does (the option may be given once).
  [ -n "$XI" ] && args+=(--index-strategy unsafe-best-match)
  # --compile-bytecode: with PYTHONDONTWRITEBYTECODE set (as on some CI machines) every process would
  # otherwise recompile torch's sources, ~30 s per `ticketbench` call. ${args[@]+...}: macOS's bash 3.2 calls an
  # empty array unbound under `set -u`.
  .venv/bin/uv pip install --quiet --python .venv/bin/python --compile-bytecode ${args[@]+"${args[@]}"} -r requirements.lock
  .venv/bin/uv pip install --quiet --python .venv/bin/python --no-deps -e .
  rm -f .venv/.installed-*
  touch "$stamp"
  echo "setup: installed requirements.lock (the lines whose markers hold on this platform) into .venv"
fi

# Real Fashion-MNIST for the CPU-sized reproduction (the only dataset installable without a download).
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: for the quick run install Fashion-MNIST: sudo apt-get install dataset-fashion-mnist" \
         "(without apt, e.g. on macOS: .venv/bin/ticketbench download fashion_mnist)" >&2
  fi
fi
