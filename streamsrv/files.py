"""Small files the server keeps: written whole or not at all, readable by their owner only."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Write ``path`` atomically, mode 0600: a new file of our own (``O_EXCL | O_NOFOLLOW``,
    so no planted file or symlink is written through) renamed over the old one. A reader sees
    the old content or the new, never a part."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


#: Where :func:`volatile_dir` makes its directories: memory, not a disk (docs/containerd.md,
#: "Where the FIFOs live").
VOLATILE_BASE = Path("/dev/shm")


def volatile_dir(key: Path, base: Path = VOLATILE_BASE) -> Path | None:
    """A directory of our own on the tmpfs ``base`` for ``key``'s short-lived files (FIFOs):
    the same path for the same ``key`` across restarts, so a server can empty what its
    predecessor left there. Mode 0700 and owned by us, checked when it exists already
    (``base`` is shared: sticky, so nobody else can move our directory once it is made).

    None when ``base`` is not a tmpfs, cannot be written, or holds the name as something
    other than our own private directory (a planted file, symlink or foreign directory).
    """
    if not _is_tmpfs(base):
        return None
    digest = hashlib.sha256(os.fsencode(key.absolute())).hexdigest()[:16]
    path = base / f"streamsrv-{os.geteuid()}-{digest}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    return path if own_dir(path, private=True) else None


def own_dir(path: Path, *, private: bool = False) -> bool:
    """Whether ``path`` itself (never through a symlink) is a directory owned by us; with
    ``private``, also one that nobody else may enter (no group or other permission bits)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_ISDIR(st.st_mode)
        and st.st_uid == os.geteuid()
        and not (private and st.st_mode & 0o077)
    )


def _is_tmpfs(path: Path) -> bool:
    """Whether ``path`` is the mount point of a tmpfs (``/proc/self/mounts``; the last mount
    on a path is the one in use)."""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
            kinds = [f[2] for f in map(str.split, mounts) if len(f) > 2 and f[1] == str(path)]
    except OSError:
        return False
    return bool(kinds) and kinds[-1] == "tmpfs"
