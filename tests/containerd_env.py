"""A private containerd (Debian's 1.6.20, with its CRI plugin: the Go reference) for tests.

``containerd_cri(tmp_dir)`` starts one and yields a :class:`ContainerdCri`; leaving the block
stops it and removes everything it made. The work is done by ``containerd_start`` and
``containerd_stop`` in ``scripts/lib.sh`` (``scripts/bench`` uses the same two functions), so the
config exists once, there (``containerd_config``). What an instance is:

- its own network namespace ``streamsrv-ctd-XXXXXXXX`` with a veth pair into it: 10.253.N.1/30
  here, 10.253.N.2/30 there (N: the first /30 of 10.253.0.0/16 no interface here has, taken
  under a lock, so two instances can run at once; alone it is 10.253.0.1 and 10.253.0.2).
  containerd runs there (``nsenter --net``, not ``ip netns exec``, which remounts /sys and hides
  the cgroup mounts from runc), and so do host-network ("NODE") pods. Its stream server listens
  on the namespace's end, plain http on a port it picks (``stream_server_port = "0"``; the URLs
  it hands out carry the real port, and ``containerd_start`` reads it with ``ss``), so a gateway
  and kubectl in this namespace can reach it: nothing is sent beyond loopback and namespaces a
  test made.
- pod networks (POD mode) from bridge + host-local + loopback (Debian's plugins in
  /usr/lib/cni) on 10.252.0.0/24, inside that namespace; host-local's leases under DIR.
- config, root, state, the gRPC and ttrpc sockets, runc's state (runc option ``Root``), the pods'
  network namespaces (``netns_mounts_under_state_dir``, not /var/run/netns) and the log, all
  under DIR = ``tmp_dir/containerd``. The log is kept after the stop, for debugging.
- the images: ``docker save`` of the busybox and pause test images, cached as
  ``/var/tmp/streamsrv-images/images-KEY.tar`` (KEY from the names and image ids), imported with
  ``ctr -n k8s.io images import``. They come out as ``docker.io/streamsrv/busybox:local`` and
  ``docker.io/streamsrv/pause:local``, which is what CRI makes of ``streamsrv/busybox:local``
  (ImageStatus and CreateContainer find it under the short name); ``sandbox_image`` is the
  pause one, so RunPodSandbox never tries to pull.

What containerd 1.6 still puts outside DIR, and the stop removes (only this instance's): the
shims' sockets in /run/containerd/s (read from each task's ``address`` file), libcni's result
cache in /var/lib/cni/results (``NETWORK-SANDBOX-eth0`` and ``cni-loopback-SANDBOX-lo``; its
cache dir cannot be configured in 1.6), and the cgroups ``/sys/fs/cgroup/*/k8s.io/ID`` (runc
removes them; the ``k8s.io`` parents go when empty). The stop does not need containerd's
help and works after it crashed: SIGTERM to containerd (which leaves its containers running,
as it always does), ``runc delete --force`` of every container in its runc root (kills by
cgroup), SIGKILL to the shims whose command line names this instance's socket after
``-address``, then every mount under DIR (rootfs overlays, sandbox /dev/shm, pod network
namespaces) deepest first, the namespace and the veth, and root/state.

Seen on the way (Debian 12 in a Firecracker VM, kernel 6.18, cgroup v1 hybrid, ext4):

- ``disabled_plugins`` with ``io.containerd.runtime.v1.linux``: the tasks service of 1.6 needs
  the v1 runtime to load, and without it the CRI plugin does not load ("no plugins registered for
  io.containerd.runtime.v1"), while containerd itself boots and answers ``ctr version``. So it
  stays enabled (it makes only a directory under state), and the start fails at once when the
  log says the CRI plugin did not load, rather than after 30 s. Disabled: opt (it would install
  into /opt/containerd), aufs, btrfs, devmapper and zfs snapshotters, tracing.
- overlayfs works here (the start tries an overlay mount under DIR first; ``native`` otherwise,
  or ``STREAMSRV_CONTAINERD_SNAPSHOTTER``). No AppArmor in this kernel; ``disable_apparmor =
  true`` anyway, so a machine with it does not need our profile. ``SystemdCgroup = false``
  (cgroupfs), ``restrict_oom_score_adj = true``; nothing else was needed: RunPodSandbox worked
  the first time in both modes (POD: 10.252.0.2, eth0 in the pod; NODE: the pod sees the
  namespace's veth and bridge, not the machine's network), busybox ``sleep 3600`` started and
  ExecSync ran in it. The one NODE failure was the test's own: a hostname with a host-network
  pod ("unable to set hostname without a private UTS namespace"), which the kubelet never asks.
- Start (namespace, veth, config, containerd up, stream server listening, import from the
  cached tar: 0.28 s of it) takes 0.5-0.6 s; the first ``docker save`` adds about 0.1 s. The
  stop takes 0.12-0.18 s without pods, 0.55 s with two running (it was 0.45 s idle while it
  read every /proc/PID/cmdline with a process each; now one grep finds the shims).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.cni_env import require_cni
from tests.conftest import BUSYBOX, PAUSE, missing, require_docker

ROOT = Path(__file__).resolve().parent.parent
LIB_SH = ROOT / "scripts" / "lib.sh"
TOOLS = (
    *("containerd", "containerd-shim-runc-v2", "ctr", "runc"),
    *("nsenter", "ip", "ss", "setsid", "flock", "docker"),
)
CRI_NAMESPACE = "k8s.io"  # containerd's namespace for everything CRI makes
POD_SUBNET_PREFIX = "10.252.0."


@dataclass(frozen=True)
class ContainerdCri:
    directory: Path  # DIR: everything of this instance but the namespace and its veth
    socket: Path  # containerd's gRPC socket, which serves CRI v1 too
    netns: str  # /var/run/netns/<netns>: containerd and host-network pods live there
    netns_path: Path
    veth: str  # our end of the veth pair
    host_address: str  # its address
    stream_host: str  # the namespace's end: the stream server's address
    stream_port: int
    busybox_image: str  # as a kubectl user writes it (streamsrv/busybox:local)
    pause_image: str
    busybox_ref: str  # as containerd stores it (docker.io/streamsrv/busybox:local)
    pause_ref: str  # sandbox_image
    snapshotter: str  # overlayfs, or native where overlay mounts fail
    cni_network: str
    config_path: Path
    log_path: Path
    pid: int
    # https stream URLs and their CA (STREAMSRV_CONTAINERD_STREAM_TLS=1), else plain http
    stream_ca: Path | None = None

    @property
    def endpoint(self) -> str:
        """The CRI endpoint, as crictl and the kubelet write it."""
        return f"unix://{self.socket}"

    def nsenter_args(self) -> list[str]:
        """The argv prefix that runs a command in containerd's network namespace."""
        return ["nsenter", f"--net={self.netns_path}", "--"]

    def ctr(
        self, *args: str, namespace: str = CRI_NAMESPACE, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", namespace, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def require_containerd() -> None:
    """Root, containerd and the tools around it, the CNI plugins, and Docker with the test
    images (they are imported from there). Skips for a developer, fails under CI=true."""
    if os.geteuid() != 0:
        missing("containerd tests need root (network namespaces, mounts)")
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    if absent:
        missing(f"not installed: {', '.join(absent)} (Debian containerd, runc, iproute2, ...)")
    require_cni()
    require_docker()


def _lib(
    function: str, *args: str, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", 'source "$0" && "$@"', str(LIB_SH), function, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **env} if env else None,
    )


def read_env(path: Path) -> dict[str, str]:
    """containerd_start's record: NAME=shell-quoted value, one a line."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            (word,) = shlex.split(line)
            name, _, value = word.partition("=")
            env[name] = value
    return env


def stop(directory: Path) -> subprocess.CompletedProcess[str]:
    """containerd_stop: safe to call again, and on a directory with nothing running."""
    return _lib("containerd_stop", str(directory), timeout=120)


@contextlib.contextmanager
def containerd_cri(tmp_dir: Path, *, stream_tls: bool = False) -> Iterator[ContainerdCri]:
    """A private containerd with the CRI plugin, under ``tmp_dir/containerd``; see the module
    docstring. The images are the test images of the Docker engine (DOCKER_HOST). With
    ``stream_tls`` its stream server serves https (``stream_ca``)."""
    require_containerd()
    directory = tmp_dir / "containerd"
    env = {"STREAMSRV_CONTAINERD_STREAM_TLS": "1"} if stream_tls else {}
    started = _lib("containerd_start", str(directory), BUSYBOX, PAUSE, timeout=180, env=env)
    if started.returncode != 0:
        stop(directory)
        raise RuntimeError(
            f"containerd_start failed ({started.returncode}):\n{started.stderr}"
            f"\n--- {directory}/containerd.log (tail) ---\n" + _tail(directory / "containerd.log")
        )
    try:
        env = read_env(directory / "containerd.env")
        cri = ContainerdCri(
            directory=directory,
            socket=Path(env["CONTAINERD_SOCKET"]),
            netns=env["CONTAINERD_NETNS"],
            netns_path=Path(env["CONTAINERD_NETNS_PATH"]),
            veth=env["CONTAINERD_VETH"],
            host_address=env["CONTAINERD_HOST_ADDR"],
            stream_host=env["CONTAINERD_STREAM_HOST"],
            stream_port=int(env["CONTAINERD_STREAM_PORT"]),
            busybox_image=env["CONTAINERD_BUSYBOX_IMAGE"],
            pause_image=env["CONTAINERD_PAUSE_IMAGE"],
            busybox_ref=env["CONTAINERD_BUSYBOX_REF"],
            pause_ref=env["CONTAINERD_PAUSE_REF"],
            snapshotter=env["CONTAINERD_SNAPSHOTTER"],
            cni_network=env["CONTAINERD_CNI_NETWORK"],
            config_path=Path(env["CONTAINERD_CONFIG"]),
            log_path=Path(env["CONTAINERD_LOG"]),
            pid=int(env["CONTAINERD_PID"]),
            stream_ca=Path(env["CONTAINERD_STREAM_CA"]) if "CONTAINERD_STREAM_CA" in env else None,
        )
    except BaseException:
        stop(directory)
        raise
    failed = True
    try:
        yield cri
        failed = False
    finally:
        stopped = stop(directory)
        if stopped.returncode != 0 and not failed:
            raise RuntimeError(f"containerd_stop failed ({stopped.returncode}):\n{stopped.stderr}")


def _tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


# ------------------------------------------------------------------------------------------
# What an instance may leave behind: for tests that check nothing is.


def shim_pids(socket: Path) -> list[int]:
    """The shims of the containerd at ``socket`` (``-address SOCKET`` in their command line)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if b"containerd-shim" in argv[0] and os.fsencode(socket) in argv:
                pids.append(int(entry))
    return pids


def mounts_under(directory: Path) -> list[str]:
    prefix = f"{directory}/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix) or point == str(directory):
            found.append(point)
    return found


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def traces(cri: ContainerdCri) -> list[Path]:
    """What the running ``cri`` has now outside its directory, for :func:`leftovers` to check
    after the stop: its namespace, the shims' sockets (each task's ``address`` file), the tasks'
    cgroups, libcni's cache files of its sandboxes."""
    found = [cri.netns_path]
    tasks = cri.directory / "state" / "io.containerd.runtime.v2.task"
    cgroup_mounts = [
        Path(line.split()[4])
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split(" - ", 1)[1].split()[0] in ("cgroup", "cgroup2")
    ]
    results = Path("/var/lib/cni/results")
    for address in tasks.glob("*/*/address"):
        with contextlib.suppress(OSError):
            found.append(Path(address.read_text().strip().removeprefix("unix://")))
    for task in tasks.glob("*/*"):
        found += [m / task.parent.name / task.name for m in cgroup_mounts]
        if results.is_dir():
            found += [p for p in results.iterdir() if f"-{task.name}-" in p.name]
    return [p for p in found if p.exists()]


def leftovers(cri: ContainerdCri, seen: Sequence[Path] = ()) -> list[str]:
    """Everything of ``cri`` still there: empty after a good stop. ``seen``: :func:`traces`
    taken while it ran."""
    left = []
    if alive(cri.pid):
        left.append(f"containerd pid {cri.pid}")
    left += [f"shim pid {pid}" for pid in shim_pids(cri.socket)]
    left += [f"mount {point}" for point in mounts_under(cri.directory)]
    left += [str(p) for p in [cri.netns_path, *seen] if p.exists()]
    if Path("/sys/class/net", cri.veth).exists():
        left.append(f"veth {cri.veth}")
    results = Path("/var/lib/cni/results")
    if results.is_dir():
        left += [str(p) for p in results.iterdir() if p.name.startswith(f"{cri.cni_network}-")]
    for name in ("root", "state", "runc", "ipam", "containerd.sock", "containerd.env"):
        if (cri.directory / name).exists():
            left.append(str(cri.directory / name))
    return sorted(set(left))
