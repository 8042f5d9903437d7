#!/usr/bin/env bash
# Docker for machines with no systemd and no reachable container registry (our CI and dev machines):
# the image builds, the container tests and `make run-docker` all go through here. It stops only a
# dockerd that it started itself.
#
#   containers/docker-env.sh up              install docker.io if missing; start dockerd unless one answers
#   containers/docker-env.sh down            stop the dockerd that `up` started (nothing otherwise)
#   containers/docker-env.sh with CMD ...    up, run CMD, then down again if this call started dockerd
#   containers/docker-env.sh base cpu|gpu    print the BASE_IMAGE to build on (see below)
#   containers/docker-env.sh build cpu|gpu [TAG]   build an image: base, CA certificates, index URLs
#   containers/docker-env.sh images          build both (the GPU one downloads ~3 GB of CUDA wheels once)
#   containers/docker-env.sh push REGISTRY   tag both images as REGISTRY/NAME:VERSION and push them
#   containers/docker-env.sh lock            rewrite containers/constraints.txt from the tested .venv (+ GPU wheels)
#   containers/docker-env.sh version         print the version the image tags carry (no Docker needed)
#
# The base image, the same for both: $BASE_IMAGE (cpu) or $GPU_BASE_IMAGE (gpu) if set; else the
# Dockerfile's default if the engine has it or can pull it; else a local Debian image made with mmdebstrap
# (python3, python3-venv, ca-certificates), cached as a tarball under $IMGCLF_CACHE and in the engine.
# The GPU image needs no CUDA base: its CUDA libraries are TensorFlow's and-cuda wheels from PyPI.
#
# Settings (environment): IMGCLF_CACHE (default ~/.cache/imgclf: dockerd log, base tarball),
# IMGCLF_DOCKER_DATA_ROOT (default /var/lib/docker, kept between runs so images stay cached),
# IMGCLF_EXTRA_CA_CERTS (a PEM file or bundle to trust during the build and at run time),
# IMGCLF_DEBIAN_MIRROR (default http://deb.debian.org/debian), IMGCLF_BASE_SUITE (default bookworm:
# Python 3.11, as on the host and within the package's requires-python).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${IMGCLF_CACHE:-$HOME/.cache/imgclf}
DATA_ROOT=${IMGCLF_DOCKER_DATA_ROOT:-/var/lib/docker}
MARKER=$CACHE/dockerd.started-by-imgclf
SUITE=${IMGCLF_BASE_SUITE:-bookworm}
MIRROR=${IMGCLF_DEBIAN_MIRROR:-http://deb.debian.org/debian}
LOCAL_BASE=imgclf-base:$SUITE

say() { echo "docker-env: $*" >&2; }
die() { say "error: $*"; exit 1; }

# The version is declared once, in components/__init__.py (pyproject.toml reads it there: dynamic).
VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$REPO/components/__init__.py")
[ -n "$VERSION" ] || die "no __version__ = \"...\" line in $REPO/components/__init__.py"

engine_answers() { docker info >/dev/null 2>&1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        die "'$*' needs root"; fi
}

# Another process (unattended upgrades, a parallel job) may hold apt's locks: wait for them rather than
# fail, and stop at the first step that fails, naming it (callers may run with set -e off).
APT=(apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
apt_install() {
    say "installing $* from Debian"
    local tries=0
    until as_root "${APT[@]}" update -qq >/dev/null; do
        tries=$((tries + 1))
        [ "$tries" -lt 60 ] || die "apt-get update failed 60 times (installing $*)"
        say "apt-get update failed (its lock may be held); retrying in 10 s"
        sleep 10
    done
    as_root env DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y -qq --no-install-recommends "$@" >/dev/null \
        || die "apt-get install $* failed"
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || die "$p is still not installed"; done
}

cmd_up() {
    if engine_answers; then return 0; fi
    command -v dockerd >/dev/null || apt_install docker.io || die "docker.io could not be installed"
    mkdir -p "$CACHE"
    say "starting dockerd (data root $DATA_ROOT, log $CACHE/dockerd.log)"
    rm -f "$CACHE/dockerd.pid"
    as_root setsid dockerd --data-root "$DATA_ROOT" --pidfile "$CACHE/dockerd.pid" \
        >"$CACHE/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 120); do
        if engine_answers && [ -s "$CACHE/dockerd.pid" ]; then
            cp "$CACHE/dockerd.pid" "$MARKER"  # dockerd's own pid (setsid may have forked)
            say "dockerd is up (pid $(cat "$MARKER"))"
            return 0
        fi
        if grep -q 'level=fatal' "$CACHE/dockerd.log" 2>/dev/null; then break; fi
        sleep 0.5
    done
    tail -n 20 "$CACHE/dockerd.log" >&2 || true
    die "dockerd did not come up; its log is $CACHE/dockerd.log"
}

cmd_down() {
    [ -f "$MARKER" ] || return 0
    local pid
    pid=$(cat "$MARKER")
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then  # not a reused pid
        say "stopping dockerd (pid $pid)"
        as_root kill -TERM "$pid" || true
        for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && die "dockerd (pid $pid) did not stop"
    fi
    rm -f "$MARKER"
}

cmd_with() {
    local started=0 rc=0
    engine_answers || { cmd_up; started=1; }
    "$@" || rc=$?
    [ $started = 1 ] && cmd_down
    return $rc
}

dockerfile() { case "$1" in cpu) echo containers/Dockerfile ;; gpu) echo containers/Dockerfile.gpu ;;
    *) die "kind must be cpu or gpu, got '$1'" ;; esac; }

have_or_pull() { docker image inspect "$1" >/dev/null 2>&1 || docker pull -q "$1" >/dev/null 2>&1; }

local_base() {
    if docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then echo "$LOCAL_BASE"; return; fi
    local tar=$CACHE/${LOCAL_BASE/:/-}.tar start=$SECONDS
    # Explicit checks: this runs inside $(...) under ||, where set -e is off.
    if [ ! -s "$tar" ]; then
        command -v mmdebstrap >/dev/null || apt_install mmdebstrap || die "mmdebstrap could not be installed"
        mkdir -p "$CACHE"
        say "making $LOCAL_BASE with mmdebstrap from $MIRROR (about a minute)"
        as_root mmdebstrap --quiet --format=tar --variant=minbase --include=python3,python3-venv,ca-certificates \
            --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
            "$SUITE" "${tar%.tar}.partial.tar" "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
            "deb ${MIRROR%/debian}/debian-security $SUITE-security main" >&2 \
            || { rm -f "${tar%.tar}.partial.tar"; die "mmdebstrap could not make $LOCAL_BASE"; }
        [ -s "${tar%.tar}.partial.tar" ] || die "mmdebstrap wrote no ${tar%.tar}.partial.tar"
        mv "${tar%.tar}.partial.tar" "$tar" || die "could not move the base tarball to $tar"
    fi
    docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' "$tar" "$LOCAL_BASE" >/dev/null \
        || die "docker import of $tar failed"
    docker image inspect "$LOCAL_BASE" >/dev/null 2>&1 || die "$LOCAL_BASE is not on the engine after the import"
    say "imported $LOCAL_BASE from $tar in $((SECONDS - start)) s"
    echo "$LOCAL_BASE"
}

cmd_base() {
    local kind=$1 wanted default
    wanted=$([ "$kind" = gpu ] && echo "${GPU_BASE_IMAGE:-}" || echo "${BASE_IMAGE:-}")
    if [ -n "$wanted" ]; then
        have_or_pull "$wanted" || die "base image $wanted is neither on this engine nor pullable"
        echo "$wanted"; return
    fi
    default=$(sed -n 's/^ARG BASE_IMAGE=//p' "$REPO/$(dockerfile "$kind")")
    if have_or_pull "$default"; then echo "$default"; return; fi
    say "$default cannot be pulled here (no registry?): using a local Debian base instead"
    local_base
}

pip_setting() {  # the host's pip setting $1 (env first, then pip config), for the build
    local env_name="PIP_$(echo "$1" | tr 'a-z-' 'A-Z_')"
    if [ -n "${!env_name:-}" ]; then echo "${!env_name}"; return; fi
    python3 -m pip config get "global.$1" 2>/dev/null || true
}

cmd_build() {
    local kind=$1 tag=${2:-} base start=$SECONDS
    [ -n "$tag" ] || tag=$(default_tag "$kind")
    # Explicit checks here: a caller may run this under ||, where set -e is off.
    base=$(cmd_base "$kind") || return $?
    # Extra CA certificates: the named file, else the bundle the host's pip trusts (a TLS proxy's).
    local ca=${IMGCLF_EXTRA_CA_CERTS:-$(pip_setting cert)}
    rm -f "$REPO"/containers/certs/*.crt
    if [ -n "$ca" ] && [ -f "$ca" ]; then cp "$ca" "$REPO/containers/certs/host-ca-bundle.crt"; fi
    local args=(--network host -f "$REPO/$(dockerfile "$kind")" -t "$tag"
                --build-arg "BASE_IMAGE=$base" --build-arg "VERSION=$VERSION")
    local url
    for setting in index-url extra-index-url; do  # only URLs a container can reach, not file:// ones
        url=$(pip_setting "$setting" | tr ' ' '\n' | grep -E '^https?://' | paste -sd' ' || true)
        case "$url" in *://*@*) die "the pip $setting has credentials in it; build args are kept in the image
history, so give the build a credential-free mirror URL (PIP_$(echo "$setting" | tr "a-z-" "A-Z_"))" ;; esac
        [ -z "$url" ] || args+=(--build-arg "PIP_$(echo "$setting" | tr 'a-z-' 'A-Z_')=$url")
    done
    say "building $tag from $base"
    docker build "${args[@]}" "$REPO" >&2 || die "docker build of $tag failed"
    # The image this build replaced, now untagged, goes (only ours: they carry this label).
    docker image prune -f --filter "label=org.opencontainers.image.title=$([ "$kind" = gpu ] && echo imgclf-gpu || echo imgclf)" >/dev/null
    local bytes
    bytes=$(docker image inspect -f '{{.Size}}' "$tag")
    say "built $tag in $((SECONDS - start)) s: $((bytes / 1000000)) MB"
}

default_tag() {  # the names the pipelines use (IMGCLF_IMAGE: components/__init__.py; IMGCLF_GPU_IMAGE: pipelines/definitions/platform.py)
    if [ "$1" = gpu ]; then echo "${IMGCLF_GPU_IMAGE:-imgclf-gpu:$VERSION}"; else echo "${IMGCLF_IMAGE:-imgclf:$VERSION}"; fi
}

cmd_images() {
    cmd_build cpu
    cmd_build gpu
}

cmd_push() {
    local registry=${1%/} kind src dst pushed=0
    for kind in cpu gpu; do
        src=$(default_tag "$kind")
        docker image inspect "$src" >/dev/null 2>&1 || { say "no $src here: skipped"; continue; }
        dst=$registry/${src##*/}
        docker tag "$src" "$dst"
        say "pushing $dst"
        docker push "$dst" >&2
        pushed=$((pushed + 1))
    done
    [ $pushed -gt 0 ] || die "no image to push: run make images first"
    say "compile against them with IMGCLF_IMAGE=$registry/$(default_tag cpu | sed 's|.*/||') IMGCLF_GPU_IMAGE=$registry/$(default_tag gpu | sed 's|.*/||')"
}

# The CUDA wheels (nvidia-*, jax-cuda*) are in no .venv (that has the CPU builds): their pins come from the
# local GPU image if there is one (what its build resolved), the rest are kept from the current file.
GPU_ONLY='^(nvidia-|jax-cuda)'
gpu_pins() {
    local out=$REPO/containers/constraints.txt gpu
    gpu=$(default_tag gpu)
    {
        if engine_answers && docker image inspect "$gpu" >/dev/null 2>&1; then
            docker run --rm --network none --entrypoint /opt/venv/bin/pip "$gpu" freeze | grep -i -E "$GPU_ONLY" \
                || die "no nvidia-* packages in $gpu"
        fi
        if [ -f "$out" ]; then grep -i -E "$GPU_ONLY" "$out" || true; fi
    } | awk -F'==' '!seen[tolower($1)]++' | sort -f
}

cmd_lock() {
    local venv=${VENV:-$REPO/.venv} gpu
    gpu=$(gpu_pins)
    { echo "# Exact versions for the images, taken from the tested .venv by 'containers/docker-env.sh lock'."
      echo "# Used as pip constraints: only the packages the image needs are installed, at these versions."
      "$venv/bin/pip" freeze --exclude-editable 2>/dev/null | grep -v -i '^imgclf' | { grep -v -i -E "$GPU_ONLY" || true; }
      if [ -n "$gpu" ]; then
          echo "# GPU image only: the CUDA wheels of tensorflow[and-cuda] and jax[cuda12] (not in the CPU .venv). 'lock' keeps"
          echo "# these lines, or takes them from a local GPU image: delete them, \`make images\`, then \`lock\` to move them."
          echo "$gpu"
      fi
    } >"$REPO/containers/constraints.txt.new"
    mv "$REPO/containers/constraints.txt.new" "$REPO/containers/constraints.txt"
    say "wrote containers/constraints.txt"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    with) shift; cmd_with "$@" ;;
    base) cmd_base "${2:?cpu or gpu}" ;;
    build) cmd_build "${2:?cpu or gpu}" "${3:-}" ;;
    images) cmd_images ;;
    push) cmd_push "${2:?usage: push REGISTRY (e.g. us-docker.pkg.dev/PROJECT/REPO or ghcr.io/OWNER)}" ;;
    lock) cmd_lock ;;
    version) echo "$VERSION" ;;
    *) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
