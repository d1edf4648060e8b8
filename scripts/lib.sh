# Shared helpers for scripts/run, scripts/test and scripts/bench. Source it; do not run it.
# Every step is idempotent: a second run on the same machine does only what is missing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
BUSYBOX_IMAGE="streamsrv/busybox:local"
PAUSE_IMAGE="streamsrv/pause:local"

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }

# Debian packages: apt-get update only when something is missing.
ensure_apt() {
    local missing=()
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        log "need root to install ${missing[*]}"
        return 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The project's virtualenv, reinstalled only when pyproject.toml changed.
ensure_venv() {
    local extras=${1:-}
    local stamp="$VENV/.streamsrv-installed"
    local hash want have="" installed="" extra ok=1
    hash=$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)
    want="$hash $extras"
    # Up to date when pyproject is unchanged and every wanted extra is installed already.
    [ -f "$stamp" ] && read -r have installed <"$stamp"
    if [ -x "$PY" ] && [ "$have" = "$hash" ]; then
        for extra in ${extras//,/ }; do
            [[ ",$installed," == *",$extra,"* ]] || ok=""
        done
        [ -n "$ok" ] && return 0
        extras=$(tr ',' '\n' <<<"$installed,$extras" | grep -v '^$' | sort -u | paste -sd,)
        want="$hash $extras"
    fi
    log "installing the Python environment in $VENV"
    # Debian's python3 makes venvs only with python3-venv (ensurepip) installed
    python3 -c "import ensurepip" 2>/dev/null || ensure_apt python3-venv
    [ -x "$PY" ] || python3 -m venv "$VENV"
    "$PY" -m pip install -q --disable-pip-version-check -e "$ROOT${extras:+[$extras]}" 2>&1 |
        grep -v "is neither a file nor a directory" >&2 || true
    "$PY" -c "import streamsrv, aiohttp, docker" # fail here, not later, if the install broke
    echo "$want" >"$stamp"
}

# The CRI messages (streamsrv/cri/api_pb2.py and .pyi) from streamsrv/cri/api.proto, with the
# venv's protoc (grpcio-tools). Only when an output is missing or older than the proto, this
# file or the venv's last install (a new protobuf may need new code). Generated into a scratch
# directory and moved into place, so a concurrent run never imports a half-written module.
gen_proto() {
    local dir="$ROOT/streamsrv/cri" out tmp
    local outputs=("$dir/api_pb2.py" "$dir/api_pb2.pyi")
    local stale=""
    for out in "${outputs[@]}"; do
        if [ ! -f "$out" ] || [ "$dir/api.proto" -nt "$out" ] ||
            [ "$ROOT/scripts/lib.sh" -nt "$out" ] || [ "$VENV/.streamsrv-installed" -nt "$out" ]; then
            stale=1
        fi
    done
    [ -n "$stale" ] || return 0
    log "generating streamsrv/cri/api_pb2.py and .pyi from api.proto"
    tmp=$(mktemp -d)
    if ! (cd "$ROOT" && "$PY" -m grpc_tools.protoc -I. --python_out="$tmp" --pyi_out="$tmp" \
        streamsrv/cri/api.proto); then
        rm -rf "$tmp"
        return 1
    fi
    mv -f "$tmp/streamsrv/cri/api_pb2.py" "$tmp/streamsrv/cri/api_pb2.pyi" "$dir/"
    rm -rf "$tmp"
}

# A private dockerd: its own socket, data dir, exec root and pid file, no iptables, no bridge.
# Usage: dockerd_start STATE_DIR ; afterwards DOCKER_HOST is exported.
dockerd_start() {
    local dir=$1
    mkdir -p "$dir"
    export DOCKER_HOST="unix://$dir/docker.sock"
    dockerd_stop "$dir" # a daemon left over by a killed run is not ours to trust
    log "starting dockerd ($dir)"
    dockerd --host "$DOCKER_HOST" --data-root "$dir/data" --exec-root "$dir/exec" \
        --pidfile "$dir/docker.pid" --iptables=false --ip-masq=false --bridge=none \
        --storage-driver=vfs --containerd-namespace streamsrv --containerd-plugins-namespace streamsrv-plugins \
        >"$dir/dockerd.log" 2>&1 &
    local i
    for i in $(seq 1 150); do
        if docker_ping; then
            return 0
        fi
        sleep 0.2
    done
    log "dockerd did not answer within 30 s; its log:"
    tail -n 30 "$dir/dockerd.log" >&2
    return 1
}

docker_ping() {
    timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

image_exists() {
    docker image inspect "$1" >/dev/null 2>&1
}

dockerd_stop() {
    local dir=$1
    local pidfile="$dir/docker.pid"
    [ -f "$pidfile" ] || return 0
    local pid
    pid=$(cat "$pidfile")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        log "stopping dockerd (pid $pid)"
        kill "$pid" 2>/dev/null || true
        local i
        for i in $(seq 1 150); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

# Images built with no registry: busybox from Debian's busybox-static, and our own pause.
build_images() {
    local work
    if ! image_exists "$BUSYBOX_IMAGE"; then
        log "building $BUSYBOX_IMAGE from busybox-static"
        work=$(mktemp -d)
        mkdir -p "$work"/{bin,tmp,etc,proc,sys,dev,root,www}
        cp /bin/busybox "$work/bin/busybox"
        local applet
        for applet in $(/bin/busybox --list); do
            [ "$applet" = busybox ] || ln -sf busybox "$work/bin/$applet"
        done
        chmod 1777 "$work/tmp"
        echo "root:x:0:0:root:/root:/bin/sh" >"$work/etc/passwd"
        echo "root:x:0:" >"$work/etc/group"
        tar -C "$work" -c . | docker import -c 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' \
            -c 'CMD ["/bin/sh"]' - "$BUSYBOX_IMAGE" >/dev/null
        rm -rf "$work"
    fi
    if ! image_exists "$PAUSE_IMAGE"; then
        log "building $PAUSE_IMAGE from images/pause/pause.c"
        work=$(mktemp -d)
        gcc -static -Os -Wall -Wextra -o "$work/pause" "$ROOT/images/pause/pause.c"
        tar -C "$work" -c pause | docker import -c 'ENTRYPOINT ["/pause"]' - "$PAUSE_IMAGE" >/dev/null
        rm -rf "$work"
    fi
}
