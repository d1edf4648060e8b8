"""The client: exec, attach and port-forward against any Kubernetes API server (or streamsrv's
gateway), over WebSocket."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence

from ._ws import open_websocket, pod_path
from .config import ClientConfig, load_kubeconfig
from .portforward import PROTOCOLS as PORTFORWARD_PROTOCOLS
from .portforward import Forwarder, stream_pair
from .remotecommand import DEFAULT_SIZE, PROTOCOLS, Completed, Process, check_half_close
from .remotecommand import run_to_end as _run_to_end


class Client:
    """Streaming calls against one API server.

    Args:
        config: where and as whom (see :func:`streamsrv.client.load_kubeconfig`).
        protocols: the exec/attach subprotocols to offer, best first (default v5, v4, then the
            unversioned binary protocol); the server picks, :attr:`Process.protocol` tells.
        open_timeout: seconds for connecting and the upgrade (``None``: no limit).
        buffer: bytes each output stream holds before the connection stops reading.
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        protocols: Sequence[str] = PROTOCOLS,
        open_timeout: float | None = 30,
        buffer: int = 1 << 20,
    ) -> None:
        self.config = config
        self.protocols = tuple(protocols)
        self.open_timeout = open_timeout
        self.buffer = buffer

    @classmethod
    def from_kubeconfig(
        cls, path: str | os.PathLike[str] | None = None, *, context: str | None = None,
        **kwargs: object,
    ) -> Client:  # fmt: skip
        """A client for a kubeconfig's current (or named) context."""
        return cls(load_kubeconfig(path, context=context), **kwargs)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ exec and attach

    async def exec(
        self,
        pod: str,
        command: Sequence[str],
        *,
        namespace: str | None = None,
        container: str | None = None,
        stdin: bool = False,
        stdout: bool = True,
        stderr: bool = True,
        tty: bool = False,
        merge_stderr: bool = False,
        size: tuple[int, int] | None = None,
    ) -> Process:
        """Start ``command`` in a container and return the running :class:`Process`.

        Args:
            pod, namespace, container: where (``namespace`` defaults to the config's; a pod with
                one container needs no ``container``).
            command: the argv, not a shell line.
            stdin: open the command's stdin (:attr:`Process.stdin`).
            stdout, stderr: ask for each output; with a tty there is only stdout.
            tty: a terminal (stderr goes to stdout, :meth:`Process.resize` works).
            merge_stderr: deliver stderr on :attr:`Process.stdout` too, in arrival order.
            size: the terminal's first (columns, rows); default 80x24, sent before any byte.

        Raises:
            UpgradeError: the server refused (``NotFound`` for no such pod, ``Unauthorized``,
                ``Forbidden``, ...), with its message.
            ConnectFailed: the server could not be reached.
        """
        if not command:
            raise ValueError("exec needs a command")
        query = [("command", str(arg)) for arg in command]
        return await self._session(
            "exec", pod, query, namespace=namespace, container=container, stdin=stdin,
            stdout=stdout, stderr=stderr, tty=tty, merge_stderr=merge_stderr, size=size,
        )  # fmt: skip

    async def attach(
        self,
        pod: str,
        *,
        namespace: str | None = None,
        container: str | None = None,
        stdin: bool = False,
        stdout: bool = True,
        stderr: bool = True,
        tty: bool = False,
        merge_stderr: bool = False,
        size: tuple[int, int] | None = None,
    ) -> Process:
        """Attach to a container's main process; the same :class:`Process` as :meth:`exec`
        (``wait()`` returns 0 when the server ends the attach without an error)."""
        return await self._session(
            "attach", pod, [], namespace=namespace, container=container, stdin=stdin,
            stdout=stdout, stderr=stderr, tty=tty, merge_stderr=merge_stderr, size=size,
        )  # fmt: skip

    async def run(
        self,
        pod: str,
        command: Sequence[str],
        *,
        input: bytes | None = None,
        namespace: str | None = None,
        container: str | None = None,
        merge_stderr: bool = False,
    ) -> Completed:
        """Run ``command`` to its end: feed ``input`` (then end stdin), collect both outputs.

        Returns:
            :class:`Completed` with the exit code, stdout and stderr (non-zero codes are values).

        Raises:
            HalfCloseUnsupported: ``input`` was given but the server chose a protocol that
                cannot end stdin (it would wait for more input forever); the session is closed.
            RemoteError, ConnectionLost, UpgradeError, ConnectFailed: see :meth:`Process.wait`
                and :meth:`exec`.
        """
        process = await self.exec(
            pod, command, namespace=namespace, container=container, stdin=input is not None,
            merge_stderr=merge_stderr,
        )  # fmt: skip
        async with process:
            check_half_close(process, input is not None)
            return await _run_to_end(process, input)

    async def _session(
        self,
        kind: str,
        pod: str,
        query: list[tuple[str, str]],
        *,
        namespace: str | None,
        container: str | None,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
        merge_stderr: bool,
        size: tuple[int, int] | None,
    ) -> Process:
        if tty:
            stderr = False  # the server merges it into stdout
        if not (stdin or stdout or stderr):
            raise ValueError("at least one of stdin, stdout and stderr is needed")
        if container:
            query.append(("container", container))
        flags = (("stdin", stdin), ("stdout", stdout), ("stderr", stderr), ("tty", tty))
        query += [(name, "true") for name, on in flags if on]
        ws = await open_websocket(
            self.config,
            pod_path(namespace or self.config.namespace, pod, kind),
            query,
            self.protocols,
            open_timeout=self.open_timeout,
        )
        process = Process(
            ws, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty, merge_stderr=merge_stderr,
            limit=self.buffer,
        )  # fmt: skip
        if tty:
            try:
                await process.resize(*(size or DEFAULT_SIZE))
            except BaseException:
                await process.close()
                raise
        return process

    # ------------------------------------------------------------------ port-forward

    async def port_forward(
        self, pod: str, port: int, *, namespace: str | None = None, limit: int = 1 << 20
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """One TCP connection to ``port`` inside the pod, as an asyncio (reader, writer) pair.

        The writer cannot end one direction (``can_write_eof()`` is False: the channel protocol
        has no half-close); ``writer.close()`` ends the connection. An error from the server
        (nothing listening, ...) is raised by the reader's next read as
        :class:`~streamsrv.client.errors.PortForwardError`.
        """
        if not 0 < port < 1 << 16:
            raise ValueError(f"port {port} is outside 1-65535")
        ws = await open_websocket(
            self.config,
            pod_path(namespace or self.config.namespace, pod, "portforward"),
            [("ports", str(port))],
            PORTFORWARD_PROTOCOLS,
            open_timeout=self.open_timeout,
        )
        try:
            return stream_pair(ws, port, limit)
        except BaseException:
            await ws.close()
            raise

    def forward(
        self,
        pod: str,
        ports: Mapping[int, int],
        *,
        namespace: str | None = None,
        address: str = "127.0.0.1",
    ) -> Forwarder:
        """Listen on ``address`` for each ``{local: remote}`` (local 0: any free port) and
        forward every connection to the pod, like ``kubectl port-forward``.

        Use as ``async with client.forward(pod, {0: 8080}) as fw: fw.ports[8080]``.
        """
        return Forwarder(
            lambda remote: self.port_forward(pod, remote, namespace=namespace), ports, address
        )


__all__ = ["Client"]
