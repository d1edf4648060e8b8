"""The containerd runtime's directories: its root and each process's FIFOs (no containerd)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from streamsrv.runtime.base import BackendError
from streamsrv.runtime.containerd import _Fifos, _own_empty_dir, _remove_dir


def test_the_root_is_made_private(tmp_path: Path) -> None:
    root = tmp_path / "state" / "io"
    _own_empty_dir(root)
    assert stat.S_IMODE(os.lstat(root).st_mode) == 0o700


def test_the_root_is_emptied_not_replaced(tmp_path: Path) -> None:
    """What an earlier server left goes; the directory itself stays (on a shared tmpfs its
    name must never be free for a moment)."""
    root = tmp_path / "io"
    root.mkdir(mode=0o755)
    (root / "c1" / "exec-1").mkdir(parents=True)
    os.mkfifo(root / "c1" / "exec-1" / "stdout")
    (root / "loose").write_bytes(b"x")
    (root / "link").symlink_to(tmp_path)
    inode = os.lstat(root).st_ino
    _own_empty_dir(root)
    assert list(root.iterdir()) == []
    st = os.lstat(root)
    assert st.st_ino == inode and stat.S_IMODE(st.st_mode) == 0o700
    assert tmp_path.exists()  # the symlink went, not what it pointed to


def test_a_root_that_is_not_a_directory_of_ours_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_bytes(b"x")
    root = tmp_path / "io"
    root.symlink_to(elsewhere)
    with pytest.raises(BackendError, match="not a directory of ours"):
        _own_empty_dir(root)
    assert (elsewhere / "keep").exists()


def test_remove_dir_takes_everything(tmp_path: Path) -> None:
    root = tmp_path / "io"
    (root / "c1").mkdir(parents=True)
    (root / "c1" / "f").write_bytes(b"x")
    _remove_dir(root)
    assert not root.exists()
    _remove_dir(root)  # gone already: nothing to do


def test_remove_dir_leaves_a_symlink_and_its_target_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A root that is a symlink (start refused it; close still runs) is not followed: neither
    the target's files nor its mounts (found by the resolved path) are touched."""
    from streamsrv.runtime import containerd

    detached: list[Path] = []
    monkeypatch.setattr(containerd, "_unmount_all", detached.append)
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep").write_bytes(b"x")
    root = tmp_path / "io"
    root.symlink_to(target)
    _remove_dir(root)
    assert (target / "keep").exists() and root.is_symlink()
    assert detached == []


def test_remove_dir_leaves_a_directory_not_ours_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A root owned by someone else (start refused it; close still runs) is not emptied."""
    from streamsrv.runtime import containerd

    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user takes root")
    detached: list[Path] = []
    monkeypatch.setattr(containerd, "_unmount_all", detached.append)
    root = tmp_path / "io"
    root.mkdir()
    (root / "keep").write_bytes(b"x")
    os.chown(root, 65534, 65534)
    with pytest.raises(BackendError):
        _own_empty_dir(root)
    _remove_dir(root)
    assert (root / "keep").exists()
    assert detached == []


@pytest.mark.parametrize("stdin", [True, False])
def test_fifos_are_closed_then_removed(tmp_path: Path, stdin: bool) -> None:
    fifos = _Fifos(tmp_path / "c1" / "exec-1", stdin=stdin, stdout=True, stderr=True)
    names = {"stdout", "stderr"} | ({"stdin"} if stdin else set())
    assert {p.name for p in fifos.directory.iterdir()} == names
    assert all(stat.S_ISFIFO(os.lstat(fifos.paths[n]).st_mode) for n in names)
    fds = list(fifos.fds.values())
    fifos.close_ends()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    assert fifos.directory.exists()  # the ends first; the files after the session's status
    fifos.remove()
    assert not fifos.directory.exists()
    assert (tmp_path / "c1").exists()  # the container's directory stays


def test_fifos_removed_with_something_else_in_their_directory(tmp_path: Path) -> None:
    """A file the walk-free removal does not know falls back to removing the whole tree."""
    fifos = _Fifos(tmp_path / "exec-1", stdin=False, stdout=True, stderr=False)
    (fifos.directory / "stray").write_bytes(b"x")
    fifos.close()
    assert not fifos.directory.exists()
    fifos.close()  # twice: nothing left to do, no error
