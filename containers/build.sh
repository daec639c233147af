#!/usr/bin/env bash
# Build the ticketbench image from the repository's working tree.
#
# Usage: containers/build.sh [--base IMAGE] [--tag IMAGE:TAG] [--host-pip-sources] [-- extra build args]
#   --base IMAGE          base image (default: the Dockerfile's CUDA 13.0 base)
#   --tag IMAGE:TAG       image name (default: localhost/ticketbench:<version from pyproject.toml>)
#   --host-pip-sources    install wheels from this machine's pip configuration (find-links and
#                         extra-index-url from `pip config`), bind-mounted read-only into the build
#                         (podman only). Without it the build uses PyPI, like any other machine.
# Env:   ENGINE=podman|docker (default podman)
#
# Why a script: the version label must be the one in pyproject.toml and the revision the git commit, and
# the host's pip sources are read at build time so nothing machine-specific is committed.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
engine=${ENGINE:-podman}
base=""
tag=""
host_sources=0
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --base) base=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        --host-pip-sources) host_sources=1; shift ;;
        --) shift; extra=("$@"); break ;;
        *) echo "build.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/pyproject.toml" | head -1)
[ -n "$version" ] || { echo "build.sh: no version in pyproject.toml" >&2; exit 2; }
tag=${tag:-localhost/ticketbench:$version}
revision=$(git -C "$repo" rev-parse HEAD 2>/dev/null || true)
if [ -n "$revision" ] && [ -n "$(git -C "$repo" status --porcelain -- src pyproject.toml requirements.lock)" ]; then
    revision="$revision-dirty"
fi
source_url=$(git -C "$repo" remote get-url origin 2>/dev/null || true)

args=(build -f "$repo/containers/Dockerfile" -t "$tag"
      --build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "SOURCE=$source_url")
# The same labels again on the command line: podman 4.3 reuses a cached LABEL layer even when the build
# arguments in it changed, which would leave a stale revision on a rebuilt image.
args+=(--label "org.opencontainers.image.version=$version" --label "org.opencontainers.image.revision=$revision"
       --label "org.opencontainers.image.source=$source_url")
[ -n "$base" ] && args+=(--build-arg "BASE_IMAGE=$base")
if [ "$engine" = podman ]; then
    args+=(--ignorefile "$repo/containers/Dockerfile.dockerignore")
fi

if [ "$host_sources" = 1 ]; then
    pip=$(command -v pip || command -v pip3)
    find_links=$("$pip" config get global.find-links 2>/dev/null || true)
    find_links=$(printf '%s\n' $find_links ${PIP_FIND_LINKS:-} | sort -u | tr '\n' ' ')
    extra_index=$("$pip" config get global.extra-index-url 2>/dev/null || true)
    index=$("$pip" config get global.index-url 2>/dev/null || true)
    cert=${PIP_CERT:-$("$pip" config get global.cert 2>/dev/null || true)}
    # Local folders must be visible inside the build: a find-links folder itself, and for a file:// index
    # (DIR/simple) its parent DIR, where the index's relative links to the wheel files point.
    mounts=()
    for src in $find_links; do
        [ -d "$src" ] && mounts+=("$src")
    done
    for src in $extra_index $index; do
        case "$src" in
            file:///*) [ -d "${src#file://}" ] && mounts+=("$(dirname "${src#file://}")") ;;
        esac
    done
    if [ "${#mounts[@]}" -gt 0 ]; then
        [ "$engine" = podman ] || { echo "build.sh: --host-pip-sources needs podman (bind mounts)" >&2; exit 2; }
        for m in $(printf '%s\n' "${mounts[@]}" | sort -u); do args+=(-v "$m:$m:ro"); done
    fi
    args+=(--build-arg "PIP_FIND_LINKS=${find_links% }" --build-arg "PIP_EXTRA_INDEX_URL=$extra_index")
    if [ -n "$cert" ] && [ -f "$cert" ]; then
        # The CA bundle of this machine's TLS proxy, mounted beside (not over) the image's own bundle.
        args+=(-v "$cert:/run/host-pip-ca.pem:ro" --build-arg "PIP_CERT=/run/host-pip-ca.pem")
    fi
    [ -n "$index" ] && args+=(--build-arg "PIP_INDEX_URL=$index")
fi

echo "+ $engine ${args[*]} ${extra[*]} $repo" >&2
exec "$engine" "${args[@]}" "${extra[@]}" "$repo"
