"""The containerd runtime's side of the runtime parameter ("containerd" in RUNTIMES).

One private containerd (tests/containerd_env.py: its own network namespace, state and socket)
serves the whole test session, started at the first test that asks for it and stopped at the
end (its directory, log included, removed after; a session killed by a signal leaves it, and
``containerd_stop DIR/containerd`` from scripts/lib.sh cleans it up). Each server or runtime a
test makes gets a containerd namespace of its own, with the test images imported into it: a
server removes what an earlier one left in its namespace at start, so two servers must never
share one.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import BUSYBOX, PAUSE
from tests.containerd_env import ContainerdCri, containerd_cri, require_containerd

LIB_SH = Path(__file__).resolve().parent.parent / "scripts" / "lib.sh"

_instance: ContainerdCri | None = None
_stack = contextlib.ExitStack()


def instance() -> ContainerdCri:
    """The session's containerd (started on first use, stopped at exit)."""
    global _instance
    require_containerd()
    if _instance is None:
        directory = Path(tempfile.mkdtemp(prefix="ctd-", dir="/var/tmp"))
        _stack.callback(shutil.rmtree, directory, True)  # after the stop, its log too
        _instance = _stack.enter_context(containerd_cri(directory))
        atexit.register(_stack.close)
    return _instance


def _image_tar() -> str:
    got = subprocess.run(
        [
            "bash",
            "-c",
            'source "$0" && containerd_image_tar "$1" "$2"',
            str(LIB_SH),
            BUSYBOX,
            PAUSE,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return got.stdout.strip()


@dataclass(frozen=True)
class Namespace:
    """A containerd namespace with the test images, on the session's containerd."""

    cri: ContainerdCri
    name: str

    @property
    def address(self) -> str:
        return str(self.cri.socket)

    def args(self) -> list[str]:
        """The ``streamsrv serve`` / ``cri`` flags for it."""
        return [
            "--containerd-address", self.address,
            "--containerd-namespace", self.name,
            "--containerd-snapshotter", self.cri.snapshotter,
        ]  # fmt: skip

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cri.ctr(*args, namespace=self.name, check=check)

    def containers(self, **labels: str) -> list[str]:
        """Ids of the containerd containers whose labels include ``labels`` (keys with
        ``_`` for ``.``: ``io_kubernetes_container_name="main"``)."""
        wanted = {k.replace("_", "."): v for k, v in labels.items()}
        found = []
        for cid in self.ctr("containers", "ls", "-q").stdout.split():
            got = self.ctr("containers", "info", cid, check=False)
            if got.returncode != 0:
                continue  # removed meanwhile
            have = json.loads(got.stdout).get("Labels") or {}
            if all(have.get(k) == v for k, v in wanted.items()):
                found.append(cid)
        return found

    def container_id(self, pod: str, container: str) -> str:
        """The id of ``pod``'s ``container``."""
        for cid in self.containers(
            io_kubernetes_pod_name=pod, io_kubernetes_container_name=container
        ):
            return cid
        raise LookupError(f"no containerd container {pod}/{container} in {self.name}")

    def pids(self, container: str) -> list[int]:
        """What ``ps`` in a container named ``container`` (of any pod) lists: the processes of
        its PID namespace (the pod's, when it shares it)."""
        tasks = {}
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                tasks[fields[0]] = int(fields[1])
        spaces = set()
        for cid in self.containers(io_kubernetes_container_name=container):
            with contextlib.suppress(KeyError, OSError):
                spaces.add(os.readlink(f"/proc/{tasks[cid]}/ns/pid"))
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/ns/pid") in spaces:
                        pids.append(int(entry))
        return pids

    def pid(self, pod: str, container: str) -> int:
        """The main process of ``pod``'s ``container``."""
        cid = self.container_id(pod, container)
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == cid:
                return int(fields[1])
        raise LookupError(f"{pod}/{container} has no task")


def namespace() -> Namespace:
    """A fresh namespace with the busybox and pause test images imported (unpacked)."""
    cri = instance()
    name = "streamsrv-t" + uuid.uuid4().hex[:10]
    subprocess.run(
        ["ctr", "--address", str(cri.socket), "-n", name, "images", "import",
         "--snapshotter", cri.snapshotter, _image_tar()],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return Namespace(cri, name)
