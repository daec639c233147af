#!/usr/bin/env bash
# Create .venv/ in the repository root with the exact versions of requirements.lock, and install ticketbench.
# Idempotent: a second run only checks. Usage: scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if ! "$PY" -c 'import sys, venv; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
  echo "setup: needs Python 3.11 with venv (Debian/Ubuntu: apt-get install python3.11 python3.11-venv)" >&2
  exit 1
fi

stamp=.venv/.installed-$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ]; then
  echo "setup: .venv is up to date with requirements.lock"
else
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
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
  # otherwise recompile torch's sources, ~30 s per `ticketbench` call.
  .venv/bin/uv pip install --quiet --python .venv/bin/python --compile-bytecode "${args[@]}" -r requirements.lock
  .venv/bin/uv pip install --quiet --python .venv/bin/python --no-deps -e .
  rm -f .venv/.installed-*
  touch "$stamp"
  echo "setup: installed $(wc -l < requirements.lock) pinned packages into .venv"
fi

# Real Fashion-MNIST for the CPU-sized reproduction (the only dataset installable without a download).
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: for the quick run install Fashion-MNIST: sudo apt-get install dataset-fashion-mnist" >&2
  fi
fi
