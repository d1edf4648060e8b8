"""The server's own small files and directories (streamsrv.files)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamsrv.files import VOLATILE_BASE, _is_tmpfs, own_dir, volatile_dir


@pytest.fixture
def key(tmp_path: Path) -> Iterator[Path]:
    """A state directory of this test's own, and whatever volatile_dir made for it removed."""
    key = tmp_path / "state"
    yield key
    made = volatile_dir(key)
    if made is not None:
        os.rmdir(made)


def _name(key: Path) -> Path:
    """Where volatile_dir puts ``key``'s directory (made once, to learn it, then removed)."""
    made = volatile_dir(key)
    assert made is not None
    os.rmdir(made)
    return made


needs_tmpfs = pytest.mark.skipif(
    not _is_tmpfs(VOLATILE_BASE) and not os.environ.get("CI"),
    reason=f"{VOLATILE_BASE} is not a tmpfs here",
)


@needs_tmpfs
def test_a_volatile_dir_is_private_in_memory_and_the_same_for_the_same_key(
    key: Path, tmp_path: Path
) -> None:
    made = volatile_dir(key)
    assert made is not None and made.parent == VOLATILE_BASE
    st = os.lstat(made)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    assert st.st_uid == os.geteuid()
    assert volatile_dir(key) == made  # the next server finds what this one left
    other = volatile_dir(tmp_path / "other")
    assert other is not None and other != made
    os.rmdir(other)


@needs_tmpfs
@pytest.mark.parametrize("planted", ["symlink", "file", "open directory"])
def test_a_planted_name_is_refused(key: Path, tmp_path: Path, planted: str) -> None:
    """The base is shared: a name someone else made first is never used (the FIFOs of every
    exec would go where they point)."""
    path = _name(key)
    target = tmp_path / "elsewhere"
    target.mkdir()
    try:
        if planted == "symlink":
            path.symlink_to(target)
        elif planted == "file":
            path.write_bytes(b"")
        else:
            path.mkdir(mode=0o777)
            path.chmod(0o777)
        assert volatile_dir(key) is None
    finally:
        if path.is_symlink() or path.is_file():
            path.unlink()
        else:
            path.rmdir()
    assert list(target.iterdir()) == []


def test_no_volatile_dir_off_a_tmpfs(key: Path, tmp_path: Path) -> None:
    assert volatile_dir(key, base=tmp_path) is None  # a directory, not a tmpfs mount point
    assert list(tmp_path.iterdir()) == [], "nothing made there"
    assert volatile_dir(key, base=tmp_path / "missing") is None


def test_own_dir_is_a_real_directory_of_ours(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    os.chmod(mine, 0o755)
    assert own_dir(mine)
    assert not own_dir(mine, private=True)  # others may enter it
    os.chmod(mine, 0o700)
    assert own_dir(mine, private=True)
    (tmp_path / "link").symlink_to(mine)
    assert not own_dir(tmp_path / "link")  # a symlink, even to one of ours
    (tmp_path / "file").write_text("")
    assert not own_dir(tmp_path / "file")
    assert not own_dir(tmp_path / "missing")
