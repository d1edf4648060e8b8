"""CRI endpoints for the tests: `streamsrv cri` as a subprocess, the way a kubelet's host runs it.

The containerd yardstick is :mod:`tests.containerd_env`; :func:`cri_target` gives either behind
one face (:class:`CriTarget`), so a scenario runs unchanged against each.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import BUSYBOX, PAUSE, stop_process


@dataclass
class CriTarget:
    kind: str  # containerd (the Go reference) | docker | process | streamsrv-containerd
    endpoint: str
    image: str  # the busybox image as this endpoint knows it
    stream_ca: Path | None = None  # the CA of https stream URLs (None: plain http)
    log: Path | None = None

    @property
    def is_streamsrv(self) -> bool:
        return self.kind != "containerd"


#: The kind of target that is `streamsrv cri --runtime containerd` ("containerd" is the Go one).
STREAMSRV_CONTAINERD = "streamsrv-containerd"


class StreamsrvCri:
    """``streamsrv cri`` in a subprocess on a socket in ``state_dir``."""

    def __init__(self, state_dir: Path, runtime: str, extra: list[str] | None = None) -> None:
        self.state_dir = state_dir
        self.runtime = runtime
        self.socket = state_dir / "cri.sock"
        self.log = state_dir / "cri.log"
        self.extra = extra or []
        self.proc: subprocess.Popen[str] | None = None
        self.stream_url = ""

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "ca.crt"

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "streamsrv", "--state-dir", str(self.state_dir), "cri",
               "--listen", self.endpoint, "--runtime", self.runtime, "--pause-image", PAUSE,
               *self.extra]  # fmt: skip
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("a") as logf:
            self.proc = subprocess.Popen(
                cmd, stdout=logf, stderr=subprocess.STDOUT, text=True, env=dict(os.environ)
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamsrv cri exited {self.proc.returncode}: {self.text()}")
            m = re.search(r"stream server: (\S+)", self.text()[offset:])
            if m and self.socket.exists():
                self.stream_url = m.group(1)
                return
            time.sleep(0.05)
        stop_process(self.proc, signal.SIGKILL)
        raise RuntimeError(f"streamsrv cri did not start: {self.text()}")

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig)
        self.proc = None


@contextlib.contextmanager
def streamsrv_cri(
    state_dir: Path, runtime: str, extra: list[str] | None = None
) -> Iterator[StreamsrvCri]:
    srv = StreamsrvCri(state_dir, runtime, extra)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@contextlib.contextmanager
def cri_target(kind: str, directory: Path) -> Iterator[CriTarget]:
    """A running CRI endpoint of ``kind`` (containerd, docker, process, streamsrv-containerd);
    gone after."""
    if kind == "containerd":
        from tests.containerd_env import containerd_cri

        with containerd_cri(directory) as ctd:
            yield CriTarget(kind, ctd.endpoint, ctd.busybox_image, None, Path(ctd.log_path))
        return
    if kind == STREAMSRV_CONTAINERD:  # `streamsrv cri --runtime containerd`, a namespace its own
        from tests import ctd_runtime

        ns = ctd_runtime.namespace()
        with streamsrv_cri(directory / "state", "containerd", ns.args()) as srv:
            yield CriTarget(kind, srv.endpoint, BUSYBOX, srv.ca_file, srv.log)
        return
    with streamsrv_cri(directory / "state", kind) as srv:
        yield CriTarget(kind, srv.endpoint, BUSYBOX, srv.ca_file, srv.log)
