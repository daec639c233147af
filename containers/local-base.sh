#!/usr/bin/env bash
# Make a local Debian 12 base image for podman, for machines that cannot pull from a container registry.
#
# Why: the project's real base image is a CUDA image from a registry; this machine (and CI) reach only the
# Debian and PyPI package registries, so a registry pull fails. debootstrap builds a minimal Debian 12
# root filesystem from Debian's packages; `podman import` turns it into an image that the Dockerfile's
# BASE_IMAGE build argument can name. Debian 12 ships python3.11, the Python the image uses.
#
# The rootfs tarball is cached (TICKETBENCH_CACHE, default ~/.cache/ticketbench) so a second run, or a CI
# run on a machine that kept its cache, skips the ~1.5 min debootstrap.
#
# Usage: containers/local-base.sh [IMAGE]        (as root; default IMAGE localhost/debian-bookworm-minbase)
# Env:   DEBIAN_MIRROR (default http://deb.debian.org/debian), TICKETBENCH_CACHE
set -euo pipefail

image=${1:-localhost/debian-bookworm-minbase}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=${TICKETBENCH_CACHE:-$HOME/.cache/ticketbench}
tarball=$cache/debian-bookworm-minbase.tar

if podman image exists "$image"; then
    echo "local-base.sh: $image already exists"
    exit 0
fi

if [ ! -s "$tarball" ]; then
    mkdir -p "$cache"
    work=$(mktemp -d "$cache/rootfs.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
        tail -20 "$work/debootstrap.log" >&2
        exit 1
    }
    # Package lists and caches are rebuilt by `apt-get update` in the Dockerfile: keep the tarball small.
    rm -rf "$work"/rootfs/var/lib/apt/lists/* "$work"/rootfs/var/cache/apt/archives/*.deb
    tar -C "$work/rootfs" --numeric-owner -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
fi

podman import --change 'CMD ["bash"]' "$tarball" "$image" >/dev/null
echo "local-base.sh: imported $image from $tarball"
