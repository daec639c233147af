#!/usr/bin/env bash
# Stop the test cluster started by tests/slurm/up.sh: the daemons by the PIDs in their pid files (never
# by name, other SLURM or munge processes on the machine are left alone), munged only if up.sh started it,
# and the /etc/slurm/slurm.conf symlink only if it points to this cluster's configuration.
#   tests/slurm/down.sh [STATE_DIR]     # default STATE_DIR: /tmp/ticketbench-slurm
set -uo pipefail
STATE=$(realpath -m "${1:-/tmp/ticketbench-slurm}")

stop() {  # stop <pidfile>: SIGTERM, then wait up to 10 s
  local pid
  [ -f "$1" ] || return 0
  pid=$(cat "$1")
  if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  fi
  rm -f "$1"
}

stop "$STATE/slurmd.pid"
stop "$STATE/slurmctld.pid"
if [ "$(readlink /etc/slurm/slurm.conf)" = "$STATE/slurm.conf" ]; then
  rm -f /etc/slurm/slurm.conf
fi
if [ -f "$STATE/munged.started-by-us" ]; then
  stop /run/munge/munged.pid
  rm -f "$STATE/munged.started-by-us"
fi
echo "slurm-down: stopped the test cluster of $STATE" >&2
