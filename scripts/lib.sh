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
    # CRI v1 (streamsrv/cri) and the part of containerd's API the containerd runtime calls
    # (streamsrv/runtime/ctdapi): *_pb2.py and *_pb2.pyi beside each .proto, gitignored.
    local protos=("$ROOT"/streamsrv/cri/api.proto "$ROOT"/streamsrv/runtime/ctdapi/*.proto)
    local proto base stale="" tmp rel
    for proto in "${protos[@]}"; do
        base=${proto%.proto}
        for out in "${base}_pb2.py" "${base}_pb2.pyi"; do
            if [ ! -f "$out" ] || [ "$proto" -nt "$out" ] ||
                [ "$ROOT/scripts/lib.sh" -nt "$out" ] || [ "$VENV/.streamsrv-installed" -nt "$out" ]; then
                stale=1
            fi
        done
    done
    [ -n "$stale" ] || return 0
    log "generating the *_pb2.py and .pyi of streamsrv/cri and streamsrv/runtime/ctdapi"
    tmp=$(mktemp -d)
    local relative=()
    for proto in "${protos[@]}"; do
        relative+=("${proto#"$ROOT"/}")
    done
    if ! (cd "$ROOT" && "$PY" -m grpc_tools.protoc -I. --python_out="$tmp" --pyi_out="$tmp" \
        "${relative[@]}"); then
        rm -rf "$tmp"
        return 1
    fi
    for rel in "${relative[@]}"; do
        rel=${rel%.proto}
        mv -f "$tmp/${rel}_pb2.py" "$tmp/${rel}_pb2.pyi" "$ROOT/$(dirname "$rel")/"
    done
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

# --- containerd: Debian's 1.6 and its CRI plugin (the Go reference), private ------------------
# containerd_start DIR [BUSYBOX_IMAGE PAUSE_IMAGE] starts a containerd of its own: config, root,
# state, runc state, sockets, log, CNI config and leases, snapshots and the pods' network
# namespaces all under DIR. It runs in a network namespace made for it (streamsrv-ctd-XXXXXXXX)
# reached from here over a veth pair (10.253.N.1/30 here, 10.253.N.2/30 there, N the first
# free /30): the CRI stream server listens on the namespace's end, plain http (or https when
# STREAMSRV_CONTAINERD_STREAM_TLS=1: a certificate for that address from a CA made for it,
# ECDSA P-256 as streamsrv's own; the CA is DIR/stream-tls/ca.crt, CONTAINERD_STREAM_CA). Pods get
# 10.252.0.0/24 from bridge + host-local + loopback inside that namespace; host-network pods
# share containerd's namespace. The images are `docker save`d (cached in
# $CONTAINERD_IMAGE_CACHE, keyed by image ids) and imported into the k8s.io namespace.
# Afterwards CONTAINERD_* (socket, netns, stream host and port, image refs, ...) are exported
# and written to DIR/containerd.env (KEY=shell-quoted value, one a line).
# containerd_stop DIR undoes all of it, even after a start that failed half-way or a
# containerd that died: containers (runc delete --force), this instance's shims (found by its
# socket in their command line) and their sockets in /run/containerd/s, every mount under DIR,
# libcni's cache files of this network in /var/lib/cni/results, the namespace and the veth.
# So stop in the same trap, whether the start succeeded or not (needs DOCKER_HOST for the images):
#   trap 'containerd_stop "$CTD"; dockerd_stop "$STATE"' EXIT
#   dockerd_start "$STATE"; build_images; containerd_start "$CTD"
# Python tests use the same two functions through tests/containerd_env.py.
CONTAINERD_POD_SUBNET="10.252.0.0/24"
CONTAINERD_IMAGE_CACHE=${STREAMSRV_IMAGE_CACHE:-/var/tmp/streamsrv-images}

containerd_start() {
    local dir=$1 busybox=${2:-$BUSYBOX_IMAGE} pause=${3:-$PAUSE_IMAGE}
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    containerd_stop "$dir" # whatever a killed run left
    local envf="$dir/containerd.env" sock="$dir/containerd.sock"
    if [ ${#sock} -gt 100 ]; then
        log "containerd_start: $sock is too long for a unix socket"
        return 1
    fi
    local tag netns veth peer slot host_ip ns_ip lockfd
    tag=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
    netns="streamsrv-ctd-$tag"
    veth="ssvctd$tag" peer="ssvctn$tag"
    : >"$envf"
    _containerd_record CONTAINERD_DIR "$dir"
    _containerd_record CONTAINERD_NETNS "$netns"
    _containerd_record CONTAINERD_NETNS_PATH "/var/run/netns/$netns"
    _containerd_record CONTAINERD_CNI_NETWORK "$netns"
    ip netns add "$netns"
    ip -n "$netns" link set lo up
    # The first /30 of 10.253.0.0/16 that no interface here has; the lock keeps two starts from
    # taking the same one.
    exec {lockfd}>/run/lock/streamsrv-containerd.lock
    flock "$lockfd"
    local used
    used=$(ip -o -4 addr show | grep -o '10\.253\.[0-9]*\.[0-9]*/' || true)
    for slot in $(seq 0 16383); do
        host_ip="10.253.$((slot / 64)).$((slot % 64 * 4 + 1))"
        grep -qxF "$host_ip/" <<<"$used" || break
    done
    ns_ip="10.253.$((slot / 64)).$((slot % 64 * 4 + 2))"
    _containerd_record CONTAINERD_VETH "$veth"
    ip link add "$veth" type veth peer name "$peer" netns "$netns"
    ip addr add "$host_ip/30" dev "$veth"
    exec {lockfd}>&-
    ip link set "$veth" up
    ip -n "$netns" addr add "$ns_ip/30" dev "$peer"
    ip -n "$netns" link set "$peer" up
    _containerd_record CONTAINERD_HOST_ADDR "$host_ip"
    _containerd_record CONTAINERD_STREAM_HOST "$ns_ip"

    # overlayfs when this filesystem takes an overlay mount, else the (slower) native snapshotter
    local snapshotter=${STREAMSRV_CONTAINERD_SNAPSHOTTER:-}
    if [ -z "$snapshotter" ]; then
        snapshotter=native
        mkdir -p "$dir/overlay-probe"/{l,u,w,m}
        if mount -t overlay overlay -o "lowerdir=$dir/overlay-probe/l,upperdir=$dir/overlay-probe/u,workdir=$dir/overlay-probe/w" \
            "$dir/overlay-probe/m" 2>/dev/null; then
            umount "$dir/overlay-probe/m"
            snapshotter=overlayfs
        fi
        rm -rf "$dir/overlay-probe"
    fi
    _containerd_record CONTAINERD_SNAPSHOTTER "$snapshotter"
    local busybox_ref pause_ref
    busybox_ref=$(_containerd_normalize "$busybox")
    pause_ref=$(_containerd_normalize "$pause")
    _containerd_record CONTAINERD_BUSYBOX_IMAGE "$busybox"
    _containerd_record CONTAINERD_PAUSE_IMAGE "$pause"
    _containerd_record CONTAINERD_BUSYBOX_REF "$busybox_ref"
    _containerd_record CONTAINERD_PAUSE_REF "$pause_ref"
    local tls=""
    if [ "${STREAMSRV_CONTAINERD_STREAM_TLS:-}" = 1 ]; then
        tls="$dir/stream-tls"
        _containerd_stream_cert "$tls" "$ns_ip" || return 1
        _containerd_record CONTAINERD_STREAM_CA "$tls/ca.crt"
    fi
    containerd_config "$dir" "$ns_ip" "$snapshotter" "$pause_ref" "$netns" "$tls" >"$dir/containerd.toml"
    _containerd_record CONTAINERD_CONFIG "$dir/containerd.toml"
    _containerd_record CONTAINERD_SOCKET "$sock"
    _containerd_record CONTAINERD_LOG "$dir/containerd.log"

    log "starting containerd in network namespace $netns ($dir)"
    # nsenter, not `ip netns exec`: that one remounts /sys, hiding the cgroup mounts from runc.
    # setsid: a Ctrl-C meant for the caller does not reach containerd before containerd_stop.
    setsid nsenter --net="/var/run/netns/$netns" containerd --config "$dir/containerd.toml" \
        </dev/null >"$dir/containerd.log" 2>&1 &
    _containerd_record CONTAINERD_PID "$!"
    local i port=""
    for i in $(seq 1 300); do
        if ! kill -0 "$CONTAINERD_PID" 2>/dev/null ||
            grep -q 'failed to load plugin io.containerd.grpc.v1.cri' "$dir/containerd.log"; then
            log "containerd exited or has no CRI plugin; its log:"
            tail -n 30 "$dir/containerd.log" >&2
            return 1
        fi
        # the CRI plugin opens its stream server as the last step before it serves
        [ -n "$port" ] || port=$(nsenter --net="/var/run/netns/$netns" ss -Hltn "src $ns_ip" |
            awk '{n = split($4, a, ":"); print a[n]; exit}' || true)
        if [ -n "$port" ] && [ -S "$sock" ] && timeout 5 ctr --address "$sock" version >/dev/null 2>&1; then
            break
        fi
        sleep 0.1
    done
    if [ -z "$port" ] || ! timeout 5 ctr --address "$sock" version >/dev/null 2>&1; then
        log "containerd did not answer within 30 s; its log:"
        tail -n 30 "$dir/containerd.log" >&2
        return 1
    fi
    _containerd_record CONTAINERD_STREAM_PORT "$port"
    local tar
    tar=$(containerd_image_tar "$busybox" "$pause")
    timeout 120 ctr --address "$sock" -n k8s.io images import --snapshotter "$snapshotter" "$tar" >/dev/null
    local names ref
    names=$(ctr --address "$sock" -n k8s.io images ls -q)
    for ref in "$busybox_ref" "$pause_ref"; do
        if ! grep -qxF "$ref" <<<"$names"; then
            log "containerd_start: $ref not among the imported images: $names"
            return 1
        fi
    done
}

# _containerd_stream_cert DIR IP: DIR/ca.crt and DIR/stream.{crt,key} (for IP), made with openssl.
_containerd_stream_cert() {
    local tls=$1 ip=$2
    mkdir -p "$tls"
    (
        cd "$tls" &&
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
                -subj "/CN=streamsrv bench containerd CA $ip" -keyout ca.key -out ca.crt &&
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                -subj "/CN=containerd" -keyout stream.key -out stream.csr &&
            printf 'subjectAltName=IP:%s\nextendedKeyUsage=serverAuth\n' "$ip" >stream.ext &&
            openssl x509 -req -in stream.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
                -extfile stream.ext -out stream.crt
    ) >/dev/null 2>"$tls/openssl.err" || {
        log "containerd_start: the stream certificate: $(cat "$tls/openssl.err")"
        return 1
    }
}

# The config, version 2. Only what differs from containerd's defaults, and what must not touch
# the machine's own containerd paths.
containerd_config() {
    local dir=$1 stream_host=$2 snapshotter=$3 pause_ref=$4 network=$5 tls=${6:-}
    mkdir -p "$dir/net.d" "$dir/ipam"
    cat >"$dir/net.d/10-streamsrv-containerd.conflist" <<JSON
{
 "cniVersion": "1.0.0",
 "name": "$network",
 "plugins": [
  {"type": "bridge", "bridge": "ctdbr0", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$CONTAINERD_POD_SUBNET"}]],
            "dataDir": "$dir/ipam"}},
  {"type": "loopback"}
 ]
}
JSON
    cat <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
# opt would install into /opt/containerd; the rest are snapshotters and tracing we do not use
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "$dir/containerd.sock"

[ttrpc]
  address = "$dir/containerd.sock.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_ref"
  stream_server_address = "$stream_host"
  stream_server_port = "0"
  enable_tls_streaming = $([ -n "$tls" ] && echo true || echo false)
  disable_apparmor = true
  restrict_oom_score_adj = true
  # the pods' network namespaces under state, not in /var/run/netns
  netns_mounts_under_state_dir = true

  [plugins."io.containerd.grpc.v1.cri".x509_key_pair_streaming]
    tls_cert_file = "${tls:+$tls/stream.crt}"
    tls_key_file = "${tls:+$tls/stream.key}"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "$snapshotter"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        # runc's state under DIR, not /run/containerd/runc
        Root = "$dir/runc"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/net.d"
    max_conf_num = 1
TOML
}

# `docker save` of the images, cached by image ids (and names: they are in the tar); prints its path
containerd_image_tar() {
    local ids key tar
    ids=$(docker image inspect -f '{{.Id}}' "$@")
    key=$(printf '%s\n' "$@" "$ids" | sha256sum | cut -c1-16)
    tar="$CONTAINERD_IMAGE_CACHE/images-$key.tar"
    mkdir -p "$CONTAINERD_IMAGE_CACHE"
    if [ ! -s "$tar" ]; then
        log "saving $* to $tar"
        docker save "$@" >"$tar.$$"
        mv -f "$tar.$$" "$tar"
    fi
    touch "$tar"
    find "$CONTAINERD_IMAGE_CACHE" -name 'images-*.tar' -mtime +7 -delete 2>/dev/null || true
    echo "$tar"
}

# How CRI (and kubectl's users) name an image: streamsrv/busybox:local is
# docker.io/streamsrv/busybox:local, busybox is docker.io/library/busybox:latest.
_containerd_normalize() {
    local ref=$1 first=${1%%/*}
    if [[ $ref != */* ]]; then
        ref="docker.io/library/$ref"
    elif [[ $first != *.* && $first != *:* && $first != localhost ]]; then
        ref="docker.io/$ref"
    fi
    [[ ${ref##*/} == *:* || $ref == *@* ]] || ref="$ref:latest"
    echo "$ref"
}

# Exports NAME=VALUE and appends it to containerd_start's env file (its local $envf).
_containerd_record() {
    printf '%s=%q\n' "$1" "$2" >>"$envf"
    export "$1=$2"
}

# Pids of this instance's shims: their command line names its socket after -address.
_containerd_shims() {
    local sock=$1 p argv
    # one grep for the candidates, then an exact look at each
    for p in $(grep -lsaF -- "$sock" /proc/[0-9]*/cmdline || true); do
        p=${p%/cmdline}
        argv=$(tr '\0' '\n' <"$p/cmdline" 2>/dev/null) || continue
        [[ ${argv%%$'\n'*} == *containerd-shim* ]] || continue
        if grep -qxF -- "$sock" <<<"$argv"; then
            echo "${p#/proc/}"
        fi
    done
}

# True while PID is alive (not a zombie) and runs with CONFIG in its command line.
_containerd_alive() {
    local pid=$1 config=$2 state
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [ "$state" != Z ] && tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$config"
}

containerd_stop() {
    local dir=$1
    [ -f "$dir/containerd.env" ] || return 0
    dir=$(cd "$dir" && pwd)
    local CONTAINERD_DIR="" CONTAINERD_NETNS="" CONTAINERD_NETNS_PATH="" CONTAINERD_CNI_NETWORK=""
    local CONTAINERD_VETH="" CONTAINERD_HOST_ADDR="" CONTAINERD_STREAM_HOST="" CONTAINERD_STREAM_PORT=""
    local CONTAINERD_SNAPSHOTTER="" CONTAINERD_BUSYBOX_IMAGE="" CONTAINERD_PAUSE_IMAGE=""
    local CONTAINERD_BUSYBOX_REF="" CONTAINERD_PAUSE_REF="" CONTAINERD_CONFIG="" CONTAINERD_SOCKET=""
    local CONTAINERD_LOG="" CONTAINERD_PID=""
    # shellcheck disable=SC1091
    source "$dir/containerd.env"
    log "stopping containerd ($dir)"
    local i pid nsroot id f addr
    # containerd itself: it leaves its containers running, as it always does
    if [ -n "$CONTAINERD_PID" ] && _containerd_alive "$CONTAINERD_PID" "$dir/containerd.toml"; then
        kill -TERM "$CONTAINERD_PID" 2>/dev/null || true
        for i in $(seq 1 100); do
            _containerd_alive "$CONTAINERD_PID" "$dir/containerd.toml" || break
            sleep 0.1
        done
        if _containerd_alive "$CONTAINERD_PID" "$dir/containerd.toml"; then
            kill -KILL "$CONTAINERD_PID" 2>/dev/null || true
        fi
    fi
    # the containers: runc kills every process in each one's cgroup, then removes cgroup and state
    for nsroot in "$dir"/runc/*/; do
        [ -d "$nsroot" ] || continue
        for id in $(runc --root "$nsroot" list -q 2>/dev/null); do
            runc --root "$nsroot" delete --force "$id" >/dev/null 2>&1 ||
                log "containerd_stop: runc delete --force $id failed"
        done
    done
    # the shims, which wait for a containerd that will not come back, and their sockets
    if [ -n "$CONTAINERD_SOCKET" ]; then
        for pid in $(_containerd_shims "$CONTAINERD_SOCKET"); do
            kill -KILL "$pid" 2>/dev/null || true
        done
        for i in $(seq 1 50); do
            if [ -z "$(_containerd_shims "$CONTAINERD_SOCKET")" ]; then
                break
            fi
            sleep 0.1
        done
    fi
    for f in "$dir"/state/io.containerd.runtime.v2.task/*/*/address; do
        [ -f "$f" ] || continue
        addr=$(cat "$f")
        addr=${addr#unix://}
        case $addr in /run/containerd/s/*) rm -f "$addr" ;; esac
    done
    # every mount under DIR (rootfs overlays, sandbox /dev/shm, pod network namespaces), deepest first
    local mnt
    while read -r mnt; do
        umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null ||
            log "containerd_stop: cannot unmount $mnt"
    done < <(awk -v d="$dir/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r)
    # libcni's result cache (not configurable in containerd 1.6): "NETWORK-SANDBOX-IFNAME", and
    # cni-loopback-SANDBOX-lo for the loopback network containerd adds by itself
    if [ -n "$CONTAINERD_CNI_NETWORK" ]; then
        rm -f /var/lib/cni/results/"$CONTAINERD_CNI_NETWORK"-*
    fi
    for f in "$dir"/state/io.containerd.grpc.v1.cri/sandboxes/*; do
        if [ -d "$f" ]; then
            rm -f /var/lib/cni/results/cni-loopback-"${f##*/}"-*
        fi
    done
    rmdir /var/lib/cni/results /var/lib/cni 2>/dev/null || true
    # cgroups (cgroupfs, v1 or v2): runc removed each container's; their parent, one per
    # containerd namespace, goes once empty (it is not ours alone: rmdir fails while in use)
    local cgroup_mounts
    cgroup_mounts=$(awk '{for (i = 7; $i != "-"; i++); if ($(i + 1) ~ /^cgroup2?$/) print $5}' /proc/self/mountinfo)
    local tasks="$dir/state/io.containerd.runtime.v2.task"
    for f in "$tasks"/*/* "$tasks"/* "$dir"/runc/*; do # NAMESPACE/ID first, then NAMESPACE
        [ -d "$f" ] || continue
        case $f in "$tasks"/*/*) id=${f#"$tasks"/} ;; *) id=${f##*/} ;; esac
        for mnt in $cgroup_mounts; do
            rmdir "$mnt/$id" 2>/dev/null || true
        done
    done
    if [ -n "$CONTAINERD_NETNS" ]; then
        ip netns del "$CONTAINERD_NETNS" 2>/dev/null || true
    fi
    if [ -n "$CONTAINERD_VETH" ] && ip link show "$CONTAINERD_VETH" >/dev/null 2>&1; then
        ip link del "$CONTAINERD_VETH" 2>/dev/null || true
    fi
    rm -rf "$dir/root" "$dir/state" "$dir/runc" "$dir/ipam" "$dir/containerd.sock" "$dir/containerd.sock.ttrpc"
    rm -f "$dir/containerd.env"
}
