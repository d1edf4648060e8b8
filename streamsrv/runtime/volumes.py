"""Pod volumes on this host: the kubelet's volume manager, for runtimes that bind-mount host
paths into containers (docs/architecture.md, "Pod volumes").

A pod's ``emptyDir`` is a directory ``ROOT/<pod uid>/<volume name>`` made before the sandbox
and removed with the pod (``medium: Memory`` is a tmpfs mounted there, so every container of
the pod shares the same memory-backed files); a ``hostPath`` is checked against its ``type``
(and created for the ``...OrCreate`` types) before anything else of the pod exists. Everything
here is blocking file-system work: runtimes call it in a worker thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import shutil
import stat
from decimal import ROUND_CEILING, Decimal
from pathlib import Path

from ..pods import EMPTY_DIR, HOST_PATH, ContainerSpec, InvalidPod, PodSpec, Volume, VolumeMount

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)
_MNT_DETACH = 2
_UID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # a pod uid as a single path element

# Kubernetes quantity suffixes a sizeLimit may carry (resource.Quantity: binary, decimal, milli).
_SUFFIXES = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
    "Ki": Decimal(1 << 10),
    "Mi": Decimal(1 << 20),
    "Gi": Decimal(1 << 30),
    "Ti": Decimal(1 << 40),
    "Pi": Decimal(1 << 50),
    "Ei": Decimal(1 << 60),
}
_QUANTITY = re.compile(r"^\+?([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:([eE][-+]?[0-9]+)|([a-zA-Z]*))$")


def quantity_bytes(text: str) -> int | None:
    """A Kubernetes quantity in bytes, rounded up (``"64Mi"`` -> 67108864, ``"1.5Gi"``,
    ``"2e3"``); None for what is not one."""
    match = _QUANTITY.fullmatch(text.strip())
    if match is None:
        return None
    number, exponent, suffix = match.group(1), match.group(2), match.group(3) or ""
    if suffix not in _SUFFIXES or (exponent and len(exponent) > 4):
        return None
    value = Decimal(number) * _SUFFIXES[suffix]
    if exponent:
        value = Decimal(number) * (Decimal(10) ** int(exponent[1:]))
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def _invalid(pod: PodSpec, field: str, value: str, why: str) -> InvalidPod:
    return InvalidPod(pod.name, [(field, f'Invalid value: "{value}": {why}')])


class VolumeHost:
    """The host side of pod volumes, under one root directory (the server's state dir)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def pod_dir(self, uid: str) -> Path:
        if not _UID.match(uid) or uid in (".", ".."):
            raise ValueError(f"not a pod uid: {uid!r}")
        return self.root / uid

    # ------------------------------------------------------------------------------ create

    def prepare(self, pod: PodSpec) -> None:
        """Make every emptyDir and check every hostPath of ``pod``, before its sandbox exists.

        Raises:
            InvalidPod: a hostPath fails its type check (the field and the kubelet's words);
                whatever this call made is removed again.
        """
        if not pod.volumes:
            return
        try:
            for i, volume in enumerate(pod.volumes):
                if volume.kind == EMPTY_DIR:
                    self._make_empty_dir(pod, volume)
                elif volume.kind == HOST_PATH:
                    self._check_host_path(pod, i, volume)
        except BaseException:
            self.remove(pod.uid)
            raise

    def _make_empty_dir(self, pod: PodSpec, volume: Volume) -> None:
        path = self.pod_dir(pod.uid) / volume.name
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o777)  # as the kubelet makes it: any user of any container may write
        if volume.medium == "Memory" and not os.path.ismount(path):
            options = "mode=0777"
            size = quantity_bytes(volume.size_limit) if volume.size_limit else None
            if size:
                options += f",size={size}"
            rc = _libc.mount(b"tmpfs", os.fsencode(path), b"tmpfs", 0, options.encode())
            if rc != 0:
                err = ctypes.get_errno()
                log.warning(
                    "pod %s/%s volume %s: medium Memory asked for, but a tmpfs cannot be "
                    "mounted here (%s): the volume is on disk",
                    pod.namespace,
                    pod.name,
                    volume.name,
                    os.strerror(err),
                )

    def _check_host_path(self, pod: PodSpec, index: int, volume: Volume) -> None:
        """The kubelet's hostPath type checker (same checks, same words)."""
        field = f"spec.volumes[{index}].hostPath.path"
        path = volume.path
        kind = volume.host_path_type

        def fail(what: str) -> InvalidPod:
            return _invalid(pod, field, path, f"hostPath type check failed: {path} {what}")

        if kind == "DirectoryOrCreate":
            try:
                os.makedirs(path, mode=0o755, exist_ok=True)
            except FileExistsError:
                raise fail("is not a directory") from None
            except OSError as exc:
                raise fail(f"cannot be created: {exc.strerror}") from None
            return
        if kind == "FileOrCreate":
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except IsADirectoryError:
                raise fail("is not a file") from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # a symlink: follow it, as the kubelet does
                    if os.path.isfile(path):
                        return
                    raise fail("is not a file") from None
                raise fail(f"cannot be created: {exc.strerror}") from None
            os.close(fd)
            if not os.path.isfile(path):
                raise fail("is not a file")
            return
        try:
            mode = os.stat(path).st_mode
        except OSError:
            if kind:
                raise fail("does not exist") from None
            # No type: the kubelet does no check, and the engine would refuse the mount later
            # with words about bind sources; say it now, before anything of the pod exists.
            raise _invalid(
                pod,
                field,
                path,
                "does not exist (a hostPath volume with type DirectoryOrCreate or "
                "FileOrCreate is created when missing)",
            ) from None
        checks = {
            "Directory": (stat.S_ISDIR, "is not a directory"),
            "File": (stat.S_ISREG, "is not a file"),
            "Socket": (stat.S_ISSOCK, "is not a socket file"),
            "CharDevice": (stat.S_ISCHR, "is not a character device"),
            "BlockDevice": (stat.S_ISBLK, "is not a block device"),
        }
        if kind in checks:
            test, what = checks[kind]
            if not test(mode):
                raise fail(what)

    def mount_source(self, pod: PodSpec, container: ContainerSpec, mount: VolumeMount) -> Path:
        """The host path to bind-mount for ``mount`` (its subPath made if missing).

        Raises:
            InvalidPod: the subPath resolves outside its volume (through a symbolic link a
                container left there: the kubelet's CVE-2017-1002101).
        """
        volume = pod.volume(mount.name)
        if volume is None:  # parse_pod refuses this; a runtime must not guess
            raise ValueError(f"no volume {mount.name!r} in pod {pod.name}")
        base = (
            self.pod_dir(pod.uid) / volume.name if volume.kind == EMPTY_DIR else Path(volume.path)
        )
        if not mount.sub_path:
            return base
        where = _mount_field(pod, container, mount)
        real_base = os.path.realpath(base)
        source = Path(real_base) / mount.sub_path
        if not source.exists():
            try:
                os.makedirs(source, mode=0o777 if volume.kind == EMPTY_DIR else 0o755)
            except OSError as exc:
                raise _invalid(
                    pod, where, mount.sub_path, f"cannot be made: {exc.strerror}"
                ) from None
        real = os.path.realpath(source)
        if os.path.commonpath([real, real_base]) != real_base:
            raise _invalid(pod, where, mount.sub_path, "resolves outside its volume")
        return Path(real)

    # ------------------------------------------------------------------------------ remove

    def remove(self, uid: str) -> None:
        """Remove a pod's emptyDirs (unmounting its tmpfs ones first); nothing there is fine."""
        directory = self.pod_dir(uid)
        if not directory.exists():
            return
        for mountpoint in mounts_under(directory):
            if _libc.umount2(os.fsencode(mountpoint), _MNT_DETACH) != 0:
                log.warning("umount %s: %s", mountpoint, os.strerror(ctypes.get_errno()))
        shutil.rmtree(directory, ignore_errors=True)
        if directory.exists():
            log.warning("pod volume directory %s could not be removed", directory)

    def sweep(self, live_uids: set[str]) -> list[str]:
        """Remove the volumes of every pod not in ``live_uids`` (left by a killed server or a
        sandbox removed behind our back); the uids removed."""
        if not self.root.is_dir():
            return []
        gone = []
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and entry.name not in live_uids and _UID.match(entry.name):
                self.remove(entry.name)
                gone.append(entry.name)
        return gone


def _mount_field(pod: PodSpec, container: ContainerSpec, mount: VolumeMount) -> str:
    ci = next((i for i, c in enumerate(pod.containers) if c.name == container.name), 0)
    mi = next((i for i, m in enumerate(container.volume_mounts) if m is mount), 0)
    return f"spec.containers[{ci}].volumeMounts[{mi}].subPath"


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory`` (deepest first), from /proc/self/mountinfo."""
    prefix = os.path.realpath(directory)
    found = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            point = line.split(" ")[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)
