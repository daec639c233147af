#!/usr/bin/env bash
# Bring up a real single-node SLURM cluster on this machine, for tests of the workflow's SLURM profile.
#
#   sudo tests/slurm/up.sh [STATE_DIR]        # default STATE_DIR: /tmp/ticketbench-slurm
#   export SLURM_CONF=STATE_DIR/slurm.conf    # what sbatch/squeue/scontrol must see (printed at the end)
#   tests/slurm/down.sh [STATE_DIR]
#
# Debian's slurm-wlm 22.05 + munge, installed with apt if missing. One node (this host, its CPUs and
# memory as `slurmd -C` reports them), one partition `debug`, no accounting database, and two fake GPUs
# (gres on /dev/null and /dev/zero) so that rules requesting `gpu` are schedulable; jobs on them see
# CUDA_VISIBLE_DEVICES but no device. Everything lives in STATE_DIR (config, state, logs, pid files),
# except one symlink /etc/slurm/slurm.conf -> STATE_DIR/slurm.conf: the jobstep plugin runs `srun`
# inside each job with every SLURM_* variable removed (SLURM_CONF included), so the configuration must
# be at the default place. An existing /etc/slurm/slurm.conf of another cluster is never replaced.
# Idempotent: a cluster that already answers is left as is.
# Needs root (packages, daemons). Exit status 3 = cannot run here (not root, no apt).
set -euo pipefail

STATE=$(realpath -m "${1:-/tmp/ticketbench-slurm}")
CONF=$STATE/slurm.conf
export SLURM_CONF=$CONF

say() { echo "slurm-up: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  say "needs root (installs packages, starts munged/slurmctld/slurmd)"; exit 3
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || { say "slurm is not installed and there is no apt-get"; exit 3; }
  say "installing slurm-wlm, slurm-client and munge with apt"
  export DEBIAN_FRONTEND=noninteractive
  # apt's lock may be held by another process for a while: wait for it instead of failing
  apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends slurm-wlm slurm-client munge >/dev/null
fi

link_default_conf() {
  local default=/etc/slurm/slurm.conf
  if [ -e "$default" ] && [ "$(readlink "$default")" != "$CONF" ]; then
    say "$default exists and is not ours; not touching another cluster's configuration"; exit 3
  fi
  mkdir -p /etc/slurm && ln -sfn "$CONF" "$default"
}

if [ -f "$CONF" ] && scontrol ping 2>/dev/null | grep -q UP && sinfo -h -o %T 2>/dev/null | grep -qE "idle|mix|alloc"; then
  link_default_conf
  say "already up ($CONF)"; echo "export SLURM_CONF=$CONF"; exit 0
fi

mkdir -p "$STATE"/{state,spool}

# munge: the authentication daemon every SLURM command and daemon talks to.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  [ -s /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || /usr/sbin/create-munge-key -f; }
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged
  touch "$STATE/munged.started-by-us"
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
fi

HOST=$(hostname -s)
NODE=$(slurmd -C | head -n 1)   # NodeName=<host> CPUs=... RealMemory=...
cat > "$CONF" <<CONF
# Written by tests/slurm/up.sh: a single-node test cluster, not a production configuration.
ClusterName=ticketbench-test
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
# Finished jobs stay visible to scontrol for an hour (the tests read their GPU allocation).
MinJobAge=3600
ReturnToService=2
GresTypes=gpu
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
$NODE Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
cat > "$STATE/gres.conf" <<CONF
# Two fake GPUs: device files that exist, so SLURM can allocate and bind them.
AutoDetect=off
NodeName=$HOST Name=gpu File=/dev/null
NodeName=$HOST Name=gpu File=/dev/zero
CONF

link_default_conf
slurmctld -f "$CONF"
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
slurmd -f "$CONF"
for _ in $(seq 150); do sinfo -h -o %T 2>/dev/null | grep -qE "^idle" && break; sleep 0.2; done
if ! sinfo -h -o %T | grep -qE "^idle"; then
  say "the node did not become idle; see $STATE/slurmctld.log and $STATE/slurmd.log"
  sinfo >&2 || true
  exit 1
fi
say "up: $(sinfo -h -o '%P %D %c CPUs %m MB %G %T')"
echo "export SLURM_CONF=$CONF"
