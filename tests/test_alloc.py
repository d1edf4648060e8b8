"""glibc's mmap threshold (streamsrv.alloc): a short read into a 256 KiB buffer costs a page
fault per 4 KiB until the threshold is raised, and none after.

Each case runs in a fresh interpreter: the threshold is the process's, and once raised it stays.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from streamsrv import alloc, cli

ROOT = Path(__file__).resolve().parents[1]

#: After importing the modules in argv (and raising the threshold if the first argument is
#: "raise"), 1000 reads of 40 KiB into 256 KiB buffers, as asyncio's ``recv(256 KiB)`` does
#: with a client that sends as it goes; prints the page faults they took.
READS = """
import importlib, resource, socket, sys
sys.path.insert(0, {root!r})
for name in sys.argv[2:]:
    importlib.import_module(name)
if sys.argv[1] == "raise":
    from streamsrv.alloc import raise_mmap_threshold
    assert raise_mmap_threshold()
a, b = socket.socketpair()
chunk = b"x" * 40960
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(1000):
    a.sendall(chunk)
    got = 0
    while got < len(chunk):
        got += len(b.recv(262144))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" and os.environ.get("CI") != "true",
    reason="glibc's malloc (CI runs on Debian, where this runs)",
)


def faults(mode: str, *modules: str, **env: str) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    clean.pop("GLIBC_TUNABLES", None)
    out = subprocess.run(
        [sys.executable, "-c", READS.format(root=str(ROOT)), mode, *modules],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return int(out.stdout)


@glibc
def test_short_reads_fault_until_the_threshold_is_raised() -> None:
    # A bare interpreter: about 10 faults per 40 KiB read (glibc as mallopt(3) describes it;
    # which imports happen to raise the threshold is no premise of this test).
    assert faults("plain") > 5000
    assert faults("raise") < 200
    assert faults("raise", "asyncio", "aiohttp.web", "streamsrv.transport") < 200


@glibc
def test_a_threshold_the_operator_set_stays() -> None:
    assert faults("raise", MALLOC_MMAP_THRESHOLD_="131072") > 5000


def test_nothing_is_done_on_another_c_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: ("musl", "1.2"))
    assert alloc.raise_mmap_threshold() is False


@pytest.mark.parametrize(("command", "raised"), [("serve", True), ("cri", True), ("pod", False)])
def test_the_program_raises_it_before_it_serves(
    command: str, raised: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    async def ran(args: Any) -> int:
        calls.append(args.command)
        return 0

    def raised_it() -> bool:
        calls.append("raised")
        return True

    monkeypatch.setattr(cli, "raise_mmap_threshold", raised_it)
    for name in ("serve", "cri", "pod_command"):
        monkeypatch.setattr(cli, name, ran)
    argv = ["--state-dir", str(tmp_path), command] + (["ls"] if command == "pod" else [])
    assert cli.main(argv) == 0
    assert calls == (["raised", command] if raised else [command])
