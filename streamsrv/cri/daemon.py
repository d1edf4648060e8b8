"""``streamsrv cri``: the CRI services on a unix socket, the stream server beside them.

The program around :class:`~streamsrv.cri.server.CriService`: it opens the socket (0600: the
file's permissions are the authentication, as for containerd's and CRI-O's sockets), starts
the stream server whose one-time URLs ``Exec``/``Attach``/``PortForward`` return, drops the
records of objects the runtime no longer has, and on SIGTERM stops taking calls, lets running
ones finish and ends the stream sessions with a status that says why (docs/cri.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from ..runtime.base import StreamingRuntime
from ..runtime.images import ImageStore
from ..server import Config, StreamServer
from .server import CriService, NetworkStatus, make_server
from .store import Store

log = logging.getLogger("streamsrv.cri")

#: Seconds running calls get to finish once the server is told to stop.
GRACE = 5.0


class EndpointError(ValueError):
    pass


def socket_path(endpoint: str) -> Path:
    """The file of a ``unix://`` endpoint (a bare absolute path is taken as one too)."""
    if endpoint.startswith("unix://"):
        path = endpoint[len("unix://") :]
    elif endpoint.startswith("/"):
        path = endpoint
    else:
        raise EndpointError(f"expected unix:///PATH, got {endpoint!r} (only unix sockets)")
    if not path.startswith("/"):
        raise EndpointError(f"the socket path must be absolute: {endpoint!r}")
    return Path(path)


def _claim(path: Path) -> None:
    """Make ``path`` free for a new socket: a stale socket file is removed, anything else kept."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise EndpointError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody answers: left by a server that died
        return
    finally:
        probe.close()
    raise EndpointError(f"{path}: another server is listening there")


@dataclass
class CriDaemon:
    """One ``streamsrv cri``: the gRPC server, the stream server and the state they share."""

    runtime: StreamingRuntime
    images: ImageStore
    state_dir: Path
    stream_config: Config
    network: NetworkStatus
    supports_mounts: bool = True

    async def run(self, endpoint: str, stop: asyncio.Event) -> None:
        path = socket_path(endpoint)
        _claim(path)
        async with StreamServer(self.runtime, self.stream_config) as streams:
            service = CriService(
                self.runtime,
                self.images,
                streams,
                Store(self.state_dir / "cri"),
                network=self.network,
                supports_mounts=self.supports_mounts,
            )
            if dropped := await service.reconcile():
                log.info("dropped %d records of sandboxes or containers the runtime lost", dropped)
            server = make_server(service)
            old = os.umask(0o177)  # the socket is made 0600
            try:
                await server.start_unix(str(path))
            finally:
                os.umask(old)
            log.info("CRI v1 on unix://%s; streams at %s", path, streams.base_url)
            print(f"streamsrv cri listening on unix://{path} (runtime: {self.runtime.name})")
            print(f"stream server: {streams.base_url}", flush=True)
            try:
                await stop.wait()
            finally:
                log.info("stopping")
                await server.stop(GRACE)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
