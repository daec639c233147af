#!/usr/bin/env bash
# Build the ticketbench image from the repository's working tree.
#
# Usage: containers/build.sh [--base IMAGE] [--tag IMAGE:TAG] [--torch-index URL] [--host-pip-sources]
#                            [--sif FILE] [-- extra build args]
#   --base IMAGE          base image (default: the Dockerfile's CUDA 13.0 base)
#   --tag IMAGE:TAG       image name (default: localhost/ticketbench:<version from pyproject.toml>)
#   --torch-index URL     torch and torchvision from PyTorch's wheel index of another CUDA (a variant,
#                         untested; give a matching --base, see containers/README.md)
#   --host-pip-sources    install wheels from this machine's pip configuration (find-links and
#                         extra-index-url from `pip config`), bind-mounted read-only into the build
#                         (podman only). Without it the build uses PyPI, like any other machine.
#   --sif FILE            then convert the image into the Apptainer image file FILE (`make image` writes
#                         containers/ticketbench.sif, the workflow's default): the engine saves it as an
#                         archive next to FILE, and `apptainer build` turns that into FILE with the %help,
#                         %labels, %runscript and %test of containers/ticketbench.def (%test runs at the end
#                         of the build). No registry holds the ticketbench image in this path.
# Env:   ENGINE=podman|docker (default podman); APPTAINER_BUILD_ARGS (e.g. --fakeroot) for `apptainer build`
#
# Why a script: the version label must be the one in pyproject.toml and the revision the git commit, and
# the host's pip sources are read at build time so nothing machine-specific is committed.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
engine=${ENGINE:-podman}
base=""
tag=""
host_sources=0
torch_index=""
sif=""
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --base) base=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        --host-pip-sources) host_sources=1; shift ;;
        --torch-index) torch_index=$2; shift 2 ;;
        --sif) sif=$2; shift 2 ;;
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
[ -n "$torch_index" ] && args+=(--build-arg "TORCH_INDEX=$torch_index")
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

if [ -z "$sif" ]; then
    echo "+ $engine ${args[*]} ${extra[*]} $repo" >&2
    exec "$engine" "${args[@]}" "${extra[@]}" "$repo"
fi

# --sif: a missing apptainer is said first, not after the long build.
apptainer=$(command -v apptainer || command -v singularity || true)
[ -n "$apptainer" ] || echo "build.sh: no apptainer on PATH: building the image and its archive only" >&2
echo "+ $engine ${args[*]} ${extra[*]} $repo" >&2
mkdir -p "$(dirname "$sif")"
sif=$(cd "$(dirname "$sif")" && pwd)/$(basename "$sif")
"$engine" "${args[@]}" "${extra[@]}" "$repo"

# podman writes an OCI archive; docker's `save` writes its own archive format, which Apptainer reads too.
archive=${sif%.sif}.oci.tar
if [ "$engine" = podman ]; then
    save=(save --format oci-archive) agent=oci-archive uri=oci-archive://
else
    save=(save) agent=docker-archive uri=docker-archive:
fi
rm -f "$archive"
echo "+ $engine ${save[*]} -o $archive $tag" >&2
"$engine" "${save[@]}" -o "$archive" "$tag"
if [ -z "$apptainer" ]; then
    echo "build.sh: no apptainer here; on a machine with Apptainer (e.g. the cluster's login node) run" >&2
    echo "    apptainer build $(basename "$sif") $uri$(basename "$archive")" >&2
    echo "and set container: to that file (or copy it to containers/ticketbench.sif in the checkout)" >&2
    exit 3
fi

# The definition's sections on top of the archive: its header names the registry image instead, and its
# %arguments only fill in that name.
def=$(mktemp "${TMPDIR:-/tmp}/ticketbench.XXXXXX.def")
partial=${sif%.sif}.partial.sif
trap 'rm -f "$def" "$partial"' EXIT
{
    printf 'Bootstrap: %s\nFrom: %s\n\n' "$agent" "$archive"
    awk '/^%/ { keep = ($1 != "%arguments") } keep' "$repo/containers/ticketbench.def" | sed "s|{{ IMAGE }}|$tag|g"
} >"$def"
# Built under another name and moved at the end: a half-written file at the workflow's default path would
# pass its check that the image exists.
echo "+ $apptainer build ${APPTAINER_BUILD_ARGS:-} --force $partial $def" >&2
# shellcheck disable=SC2086  # APPTAINER_BUILD_ARGS is a list of options
"$apptainer" build ${APPTAINER_BUILD_ARGS:-} --force "$partial" "$def"
mv -f "$partial" "$sif"
rm -f "$archive"
echo "build.sh: wrote $sif" >&2
