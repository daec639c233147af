#!/usr/bin/env bash
# Install and configure podman + debootstrap on Debian 12, as root (CI and the project's dev machines).
#
# Why the configuration: podman 4.3 (Debian 12) as root works on these machines only with runc (crun fails
# on their hybrid cgroup layout) and with explicit ulimits (the default nofile limit is rejected). See
# ../shared/PLATFORM.md, "Containers". Idempotent: safe to run before every container test session.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "podman-setup.sh: must run as root (installs packages with apt-get)" >&2
    exit 2
fi

need=()
for cmd in podman runc debootstrap; do
    command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd")
done
if [ "${#need[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    # Another apt (a parallel setup script) may hold the lock for a while: wait for it instead of failing.
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
        podman runc debootstrap ca-certificates >/dev/null
fi

conf=/etc/containers/containers.conf
mkdir -p /etc/containers
if ! grep -q '^# ticketbench: podman-setup.sh' "$conf" 2>/dev/null; then
    if [ -s "$conf" ]; then
        echo "podman-setup.sh: $conf exists and was not written by this script; leaving it alone" >&2
    else
        cat >"$conf" <<'CONF'
# ticketbench: podman-setup.sh (runc + explicit ulimits, see PLATFORM.md "Containers")
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
runtime = "runc"
CONF
    fi
fi

podman --version
