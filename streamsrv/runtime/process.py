"""The built-in process runtime: pods as groups of local processes, with no isolation at all.

This is the zero-setup backend: it needs no container engine, so ``streamsrv serve`` works on
any Linux machine. A pod is a working directory plus the processes started from each
container's ``command``/``args`` (the image is recorded and never pulled); exec runs a local
command (on a real pseudo-terminal when ``tty``), attach connects to a container process's
stdio, and port-forward dials the host's loopback.

**Nothing is isolated**: every "container" runs as the server's user, sees the host's files,
processes and network. Use it to try streamsrv or to test clients, never to contain anything.

Processes die with their pod (their process group is signalled), exec processes die with their
session, and every process dies with the server (``PR_SET_PDEATHSIG``), so a killed server
leaves none behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import pty
import shutil
import signal
import socket
import struct
import termios
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from ..pods import (
    LABEL_CONTAINER_NAME,
    ContainerSpec,
    ContainerState,
    InvalidPod,
    PodSpec,
    SandboxState,
)
from ..protocol.resize import TerminalSize
from .base import (
    KILLED,
    BackendError,
    ByteSink,
    ContainerNotFound,
    FdWriter,
    Flag,
    Listeners,
    LogFile,
    Resizes,
    SizeFollower,
    StdIO,
    attach_until_exit,
    check_container,
    connect_first,
    first_done,
    loopback_sockets,
    pump_output,
    wait_event,
    wait_fd,
)

log = logging.getLogger(__name__)

FIRST_SIZE_WAIT = 1.0  # seconds a tty exec waits for the client's first size before it starts
CHUNK = 1 << 16
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Why a container cannot have a PID namespace of its own here ("pod" and "node" are what
#: every process already has: the host's, shared by all).
_NO_OWN_PID = (
    'the process runtime cannot give a container a PID namespace of its own ("container"): '
    "its containers are processes on this host, which all see the host's processes "
    '("pod" and "node" are served; the docker runtime serves "container")'
)
_INHERITED = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ")


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def _child_setup(controlling_tty: bool) -> Callable[[], None]:
    """Runs in the child between fork and exec: own session, terminal, death with the server."""

    def setup() -> None:
        os.setsid()
        if controlling_tty:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return setup


def set_winsize(fd: int, size: TerminalSize) -> None:
    """TIOCSWINSZ on a terminal; the kernel sends SIGWINCH to its foreground process group."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size.height, size.width, 0, 0))


def _exit_status(returncode: int) -> int:
    """A shell's convention (and Docker's): killed by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


class FdReader:
    """Non-blocking reads from a pipe or a pty master on the event loop."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)

    async def read(self, n: int = CHUNK) -> bytes:
        """Up to ``n`` bytes; ``b""`` at end of file (a pty whose last slave closed: EIO)."""
        while True:
            try:
                return os.read(self.fd, n)
            except BlockingIOError:
                await wait_fd(self.fd, readable=True)
            except OSError as exc:
                if exc.errno == errno.EIO:
                    return b""
                raise


def _close_fds(fds: Iterable[int | None]) -> None:
    for fd in fds:
        if fd is not None and fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def _kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


@dataclass(eq=False)
class _Sandbox:
    id: str
    pod: PodSpec
    directory: Path
    created: datetime = field(default_factory=_now)
    running: bool = True
    labels: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.labels = self.pod.sandbox_labels()  # serialises the manifest: once, not per list


@dataclass(eq=False)
class _Container:
    id: str
    sandbox: _Sandbox
    spec: ContainerSpec
    labels: dict[str, str]
    state: str = "created"  # created | running | exited
    proc: asyncio.subprocess.Process | None = None
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    master: int | None = None  # pty master (tty containers)
    stdin_fd: int | None = None  # our end of its stdin (stdin containers without tty)
    stdin_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # attached sessions: (stdout, stderr) sinks; the tty merges both into stdout
    listeners: Listeners = field(default_factory=list)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    pump: asyncio.Task[None] | None = None
    log: LogFile | None = None  # spec.log_path, open while the output lasts
    closing: asyncio.Task[None] | None = None  # closes stdin once a write in progress is done


class ProcessRuntime:
    """Pods as local process groups (see the module docstring: no isolation)."""

    name = "process"

    def __init__(self, root: Path) -> None:
        self.root = root
        self._sandboxes: dict[str, _Sandbox] = {}
        self._containers: dict[str, _Container] = {}
        self._execs: set[asyncio.subprocess.Process] = set()
        if root.exists():  # pods of a previous server died with it
            shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        for proc in list(self._execs):
            _kill_group(proc.pid)
        for c in list(self._containers.values()):
            await self._kill(c)
        self._containers.clear()
        for s in list(self._sandboxes.values()):
            await asyncio.to_thread(shutil.rmtree, s.directory, True)
        self._sandboxes.clear()

    # ----------------------------------------------------------------------------- images

    async def ensure_image(self, image: str) -> None:
        """Images are recorded only: the process runtime runs host programs."""

    # ----------------------------------------------------------------------------- sandboxes

    async def run_pod_sandbox(self, pod: PodSpec) -> str:
        if pod.volumes or any(c.volume_mounts for c in pod.containers):
            # Nothing here could honour a mountPath: a "container" is a process that sees the
            # host's own files, with no mount namespace of its own to mount a volume into.
            raise InvalidPod(
                pod.name,
                [
                    (
                        "spec.volumes",
                        "Forbidden: the process runtime cannot mount volumes: its containers "
                        "are processes on this host, with no mount namespace of their own "
                        "(the docker runtime mounts emptyDir and hostPath volumes)",
                    )
                ],
            )
        for c in pod.containers:
            check_container(pod, c, own_pid_refused=_NO_OWN_PID)
        sandbox_id = _new_id()
        directory = self.root / f"{pod.namespace}_{pod.name}_{sandbox_id[:12]}"
        await asyncio.to_thread(directory.mkdir, parents=True)
        self._sandboxes[sandbox_id] = _Sandbox(sandbox_id, pod, directory)
        return sandbox_id

    async def stop_pod_sandbox(self, sandbox_id: str) -> None:
        sandbox = self._sandbox(sandbox_id)
        for c in self._of(sandbox):
            await self._kill(c)
        sandbox.running = False

    async def remove_pod_sandbox(self, sandbox_id: str) -> None:
        sandbox = self._sandboxes.pop(sandbox_id, None)
        if sandbox is None:
            return
        sandbox.running = False
        for c in self._of(sandbox):
            await self._kill(c)
            self._containers.pop(c.id, None)
        await asyncio.to_thread(shutil.rmtree, sandbox.directory, True)

    def _sandbox(self, sandbox_id: str) -> _Sandbox:
        try:
            return self._sandboxes[sandbox_id]
        except KeyError:
            raise ContainerNotFound(sandbox_id) from None

    def _of(self, sandbox: _Sandbox) -> list[_Container]:
        return [c for c in self._containers.values() if c.sandbox is sandbox]

    async def list_pod_sandboxes(
        self, labels: Mapping[str, str] | None = None
    ) -> list[SandboxState]:
        out = [
            SandboxState(s.id, s.pod, s.running, s.created, "127.0.0.1")
            for s in self._sandboxes.values()
            if _matches(s.labels, labels)
        ]
        out.sort(key=lambda s: (s.pod.namespace, s.pod.name))
        return out

    async def sandbox_ready(self, sandbox_id: str) -> bool:
        sandbox = self._sandboxes.get(sandbox_id)
        return sandbox is not None and sandbox.running

    # ----------------------------------------------------------------------------- containers

    async def create_container(
        self, sandbox_id: str, pod: PodSpec, container: ContainerSpec
    ) -> str:
        sandbox = self._sandbox(sandbox_id)
        check_container(pod, container, own_pid_refused=_NO_OWN_PID)
        if not container.command and not container.args:
            raise BackendError(
                f"container {container.name}: the process runtime runs no image entrypoint; "
                "give the container a command"
            )
        cid = _new_id()
        self._containers[cid] = _Container(cid, sandbox, container, pod.container_labels(container))
        return cid

    def _container(self, container_id: str) -> _Container:
        try:
            return self._containers[container_id]
        except KeyError:
            raise ContainerNotFound(container_id) from None

    def _env(self, c: _Container, tty: bool) -> dict[str, str]:
        env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
        env.setdefault("PATH", _DEFAULT_PATH)
        env["HOSTNAME"] = c.sandbox.pod.name
        if tty:
            env["TERM"] = "xterm"
        env.update(c.spec.env)
        return env

    def _cwd(self, c: _Container) -> str:
        return c.spec.working_dir or str(c.sandbox.directory)

    async def start_container(self, container_id: str) -> None:
        c = self._container(container_id)
        if c.state != "created":
            raise BackendError(f"container {container_id[:12]} was already started")
        spec = c.spec
        argv = [*spec.command, *spec.args]
        child: list[int] = []
        if spec.log_path and c.log is None:
            c.log = await LogFile.open_async(spec.log_path)
        try:
            if spec.tty:
                c.master, slave = pty.openpty()
                child = [slave]
                stdio = (slave, slave, slave)
            else:
                if spec.stdin:
                    child_in, c.stdin_fd = os.pipe()
                else:
                    child_in = os.open(os.devnull, os.O_RDONLY)
                out_r, out_w = os.pipe()
                err_r, err_w = os.pipe()
                child = [child_in, out_w, err_w]
                stdio = (child_in, out_w, err_w)
            proc = await self._spawn(argv, stdio, self._env(c, spec.tty), self._cwd(c), spec.tty)
        except BaseException:
            _close_fds([c.master, c.stdin_fd, *child])
            c.master = c.stdin_fd = None
            if c.log is not None:
                c.log.close()
                c.log = None
            raise
        finally:
            _close_fds(child)
        c.proc, c.state, c.started_at = proc, "running", _now()
        outputs = (
            [(FdReader(c.master), 1)]
            if c.master is not None
            else [(FdReader(out_r), 1), (FdReader(err_r), 2)]
        )
        c.pump = asyncio.create_task(self._pump(c, outputs), name=f"container {c.spec.name}")
        log.info(
            "started %s/%s container %s as pid %d (process runtime: no isolation)",
            c.sandbox.pod.namespace,
            c.sandbox.pod.name,
            spec.name,
            proc.pid,
        )

    async def _spawn(
        self,
        argv: Sequence[str],
        stdio: tuple[int, int, int],
        env: dict[str, str],
        cwd: str,
        tty: bool,
    ) -> asyncio.subprocess.Process:
        try:
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=stdio[0],
                stdout=stdio[1],
                stderr=stdio[2],
                env=env,
                cwd=cwd,
                preexec_fn=_child_setup(tty),
            )
        except FileNotFoundError as exc:
            raise _StartError(127, f'exec: "{argv[0]}": executable file not found') from exc
        except PermissionError as exc:
            raise _StartError(126, f'exec: "{argv[0]}": permission denied') from exc
        except OSError as exc:
            raise _StartError(126, f'exec: "{argv[0]}": {exc.strerror or exc}') from exc

    async def _pump(self, c: _Container, outputs: list[tuple[FdReader, int]]) -> None:
        """Read the container's output until it ends, handing it to whoever is attached and
        to its log file (each chunk written as it comes; a line not ended when its stream
        ends is written as a partial line, as containerd does)."""
        try:
            await pump_output(outputs, c.listeners, c.log)
            assert c.proc is not None
            code = _exit_status(await c.proc.wait())
            c.state, c.exit_code, c.finished_at = "exited", code, _now()
            log.info("container %s exited with %d", c.spec.name, code)
        finally:
            if c.log is not None:
                c.log.close()
            _close_fds([r.fd for r, _ in outputs])
            c.master = None  # closed above: it was one of the outputs
            _close_fds([c.stdin_fd])
            c.stdin_fd = None
            c.exited.set()

    async def _kill(self, c: _Container, grace: float = 0.0) -> None:
        proc = c.proc
        if proc is None or proc.returncode is not None:
            if c.state == "created":
                c.state, c.exit_code, c.finished_at = "exited", KILLED, _now()
            return
        if grace > 0:
            _kill_group(proc.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), grace)
        _kill_group(proc.pid, signal.SIGKILL)
        await proc.wait()
        if c.pump is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(c.pump), 5)

    async def stop_container(self, container_id: str, grace_period: float) -> None:
        await self._kill(self._container(container_id), grace_period)

    async def remove_container(self, container_id: str) -> None:
        c = self._containers.get(container_id)
        if c is None:
            return
        await self._kill(c)
        self._containers.pop(container_id, None)

    async def list_containers(
        self, labels: Mapping[str, str] | None = None
    ) -> list[ContainerState]:
        return [
            ContainerState(
                id=c.id,
                name=c.labels[LABEL_CONTAINER_NAME],
                image=c.spec.image,
                image_id="",
                state=c.state,
                exit_code=c.exit_code,
                started_at=c.started_at,
                finished_at=c.finished_at,
                runtime="process",
                labels=dict(c.labels),
                log_path=c.spec.log_path,
            )
            for c in self._containers.values()
            if _matches(c.labels, labels)
        ]

    async def container_stopped(self, container_id: str) -> str | None:
        c = self._containers.get(container_id)
        if c is None:
            return f"container {container_id[:12]} was removed"
        if c.state == "running":
            return None
        name = c.labels.get(LABEL_CONTAINER_NAME, c.spec.name)
        if c.state == "exited":
            return f'container "{name}" exited with code {c.exit_code}'
        return f'container "{name}" is {c.state}'

    def _running(self, container_id: str) -> _Container:
        c = self._container(container_id)
        if c.state != "running":
            raise BackendError(f"container {c.spec.name} is not running")
        return c

    # ----------------------------------------------------------------------------- streaming

    async def exec(self, container_id: str, cmd: Sequence[str], io: StdIO, *, tty: bool) -> int:
        c = self._running(container_id)
        sizes: SizeFollower | None = None
        master: int | None = None
        sized = Flag()
        fds: list[int] = []  # ours, closed at the end
        child: list[int] = []  # the child's, closed once it runs
        try:
            if tty:
                master, slave = pty.openpty()
                fds.append(master)
                child.append(slave)
                stdio = (slave, slave, slave)
                if io.resize is not None:
                    # a follower, not a task iterating the sizes (no task between sizes)
                    sizes = io.resize.follow(partial(_apply_size, master, sized))
                    # Start the process at its real size: a shell that runs `stty size` at
                    # once must not see 0x0 (kubectl sends the size right after connecting).
                    await wait_event(sized, FIRST_SIZE_WAIT)
            else:
                ends = []
                for wanted, reading in ((io.stdin, True), (io.stdout, False), (io.stderr, False)):
                    if wanted is None:
                        fd = os.open(os.devnull, os.O_RDONLY if reading else os.O_WRONLY)
                        child.append(fd)
                        ends.append(fd)
                        continue
                    r, w = os.pipe()
                    mine, theirs = (w, r) if reading else (r, w)
                    fds.append(mine)
                    child.append(theirs)
                    ends.append(theirs)
                stdio = (ends[0], ends[1], ends[2])
            try:
                proc = await self._spawn(cmd, stdio, self._env(c, tty), self._cwd(c), tty)
            finally:
                _close_fds(child)
                child.clear()
            self._execs.add(proc)
            try:
                await self._exec_io(proc, io, tty, fds)
                return _exit_status(await proc.wait())
            except BaseException:
                _kill_group(proc.pid)
                await asyncio.shield(proc.wait())
                raise
            finally:
                self._execs.discard(proc)
        except _StartError as exc:
            sink = io.stderr or io.stdout
            if sink is not None:
                with contextlib.suppress(ConnectionError, OSError):
                    await sink.write(f"streamsrv: {exc.message}\r\n".encode())
            return exc.code
        finally:
            if sizes is not None and (applying := sizes.stop()) is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await applying
            # The child's ends too: a session that ends while it waits for the terminal's
            # first size never spawned anything (each such session leaked a /dev/pts fd).
            _close_fds(child)
            _close_fds(fds)

    async def _exec_io(
        self, proc: asyncio.subprocess.Process, io: StdIO, tty: bool, fds: list[int]
    ) -> None:
        """Copy stdin in and output out until the output ends."""
        if tty:
            master = fds[0]
            inp: int | None = master if io.stdin is not None else None
            outputs = [(FdReader(master), io.stdout)]
        else:
            it = iter(fds)
            inp = next(it) if io.stdin is not None else None
            outputs = []
            for sink in (io.stdout, io.stderr):
                if sink is not None:
                    outputs.append((FdReader(next(it)), sink))

        async def stdin() -> None:
            assert io.stdin is not None and inp is not None
            writer = FdWriter(inp)
            with contextlib.suppress(BrokenPipeError):
                while chunks := await io.stdin.read_chunks():
                    await writer.write_chunks(chunks)
                if tty:
                    await writer.write(b"\x04")  # a terminal has no half-close: EOT
                else:
                    os.close(inp)
                    fds.remove(inp)

        async def copy(reader: FdReader, sink: ByteSink | None) -> None:
            while data := await reader.read():
                if sink is not None:
                    await sink.write(data)

        feeder = asyncio.create_task(stdin()) if inp is not None else None
        copies = [asyncio.create_task(copy(r, s)) for r, s in outputs]
        # Done once the process has exited and its output has ended: input goes on after the
        # output ended (a process may close its stdout and read on, `sh -c 'dd of=/dev/null
        # 2>/dev/null'`, and would wait forever for the end of an input nobody copies).
        exited = asyncio.ensure_future(proc.wait())
        waits: list[asyncio.Future[Any]] = [*copies, exited]
        try:
            await first_done(waits, on_failure=True)
            for task in waits:
                if task.done():
                    task.result()  # a sink that failed (its client is gone) ends the exec
        finally:
            # Every copy has stopped before the caller closes the fds: a copy left running
            # would read a number that the next session's pipe may already reuse (a blocking
            # read that froze the event loop, found by soak/fuzz.py).
            for task in [*copies, exited, *([feeder] if feeder is not None else [])]:
                task.cancel()
            for task in [*copies, exited, *([feeder] if feeder is not None else [])]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def attach(self, container_id: str, io: StdIO, *, tty: bool) -> None:
        """Share the container's output, and its terminal or stdin, until it ends.

        The end of this client's input (or the client leaving) reaches the container only
        with ``stdinOnce``, as the Docker engine has it: without a tty its stdin is closed
        (the attach goes on until the container ends); with a tty this attach ends there,
        the terminal staying open. Without ``stdinOnce`` stdin stays open for the next client.
        """
        c = self._running(container_id)
        sized = Flag()  # the terminal has this client's first size, or never will
        sizes = None
        if io.resize is not None and c.master is not None:
            master = c.master
            sizes = _apply_sizes(master, io.resize, sized, lambda: c.master == master)
        else:
            sized.set()
        target = c.master if c.master is not None else c.stdin_fd
        stdin = None
        if io.stdin is not None and target is not None:
            stdin = self._attach_stdin(c, target, io, sized)
        await attach_until_exit(
            c.listeners,
            io,
            c.exited,
            sizes,
            stdin,
            stdin_ends_it=c.spec.stdin_once and target == c.master,
        )

    async def _attach_stdin(self, c: _Container, fd: int, io: StdIO, sized: Flag) -> None:
        assert io.stdin is not None
        # the container's pump closes this fd when the container ends
        writer = FdWriter(fd, lambda: fd in (c.master, c.stdin_fd))
        try:
            # Input waits until the terminal has the client's first size (bounded): a shell
            # reading `stty size` from it must see that size.
            await wait_event(sized, FIRST_SIZE_WAIT)
            with contextlib.suppress(BrokenPipeError):
                while chunks := await io.stdin.read_chunks():
                    async with c.stdin_lock:  # whole chunks from each attached client
                        await writer.write_chunks(chunks)
        finally:
            if c.spec.stdin_once and fd == c.stdin_fd:
                self._close_stdin(c)

    def _close_stdin(self, c: _Container) -> None:
        """Close a container's stdin (its process reads to the end, then gets EOF); after a
        chunk another client is writing, if one is."""

        def close() -> None:
            _close_fds([c.stdin_fd])
            c.stdin_fd = None

        async def after_the_write() -> None:
            async with c.stdin_lock:
                close()

        if not c.stdin_lock.locked():
            close()
        elif c.closing is None:
            c.closing = asyncio.create_task(after_the_write())

    async def dial(self, sandbox_id: str, port: int) -> socket.socket:
        if not await self.sandbox_ready(sandbox_id):
            raise BackendError(f"pod sandbox {sandbox_id[:12]} is not running")
        return await connect_first(loopback_sockets(), port)


class _StartError(BackendError):
    """A program that cannot be started; ``code`` is the shell's 126 or 127."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


async def _apply_size(fd: int, sized: Flag, size: TerminalSize) -> None:
    """Apply one of the client's terminal sizes to a pty (:meth:`Resizes.follow`)."""
    if size.width and size.height:
        with contextlib.suppress(OSError):
            set_winsize(fd, size)
    sized.set()


async def _apply_sizes(
    fd: int,
    sizes: Resizes,
    sized: Flag | None,
    alive: Callable[[], bool] = lambda: True,
) -> None:
    """Apply the client's terminal sizes to a pty; ``sized`` is set after the first one."""
    try:
        async for size in sizes:
            if size.width and size.height and alive():
                with contextlib.suppress(OSError):
                    set_winsize(fd, size)
            if sized is not None:
                sized.set()
    finally:
        if sized is not None:
            sized.set()


def _matches(labels: Mapping[str, str], wanted: Mapping[str, str] | None) -> bool:
    return all(labels.get(k) == v for k, v in (wanted or {}).items())
