"""What a container backend implements (the Python side of the kubelet's CRI ``Runtime``).

Runtimes never know which wire protocol carried the bytes, nor pods by name: the gateway
resolves names through :mod:`streamsrv.pods` and the label filters below.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import errno
import json
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import BackendError as BackendError  # the one error of every runtime call
from ..errors import EngineUnavailable as EngineUnavailable  # the engine cannot be reached
from ..pods import (
    PID_CONTAINER,
    PID_NAMESPACES,
    ContainerSpec,
    ContainerState,
    InvalidPod,
    PodSpec,
    SandboxState,
)
from ..protocol.crilog import STDERR, STDOUT, CriLogWriter
from ..protocol.resize import TerminalSize

_log = logging.getLogger(__name__)


class ImageNotFound(BackendError):
    def __init__(self, image: str, detail: str = "") -> None:
        self.image = image
        super().__init__(f'image "{image}" not found{": " + detail if detail else ""}')


class ContainerNotFound(BackendError):
    def __init__(self, container_id: str) -> None:
        self.container_id = container_id
        super().__init__(f'container "{container_id}" not found')


class Runtime(Protocol):
    """The pod model of a backend. Every method is safe to call from the event loop."""

    name: str

    async def ensure_image(self, image: str) -> bool | None:
        """Make the image available (present locally, else pulled); raise ImageNotFound.
        True if it was pulled (for the gateway's Pulled event)."""
        ...

    async def run_pod_sandbox(self, pod: PodSpec) -> str: ...

    async def stop_pod_sandbox(self, sandbox_id: str) -> None: ...

    async def remove_pod_sandbox(self, sandbox_id: str) -> None: ...

    async def list_pod_sandboxes(
        self, labels: Mapping[str, str] | None = None
    ) -> list[SandboxState]: ...

    async def create_container(
        self, sandbox_id: str, pod: PodSpec, container: ContainerSpec
    ) -> str: ...

    async def start_container(self, container_id: str) -> None: ...

    async def stop_container(self, container_id: str, grace_period: float) -> None: ...

    async def remove_container(self, container_id: str) -> None: ...

    async def list_containers(
        self, labels: Mapping[str, str] | None = None
    ) -> list[ContainerState]: ...

    async def close(self) -> None: ...


def check_container(
    pod: PodSpec, container: ContainerSpec, *, own_pid_refused: str | None = None
) -> None:
    """Refuse (InvalidPod, before anything is made) a container whose ``pid_namespace`` is
    not one of :data:`~streamsrv.pods.PID_NAMESPACES` or whose ``log_path`` is not absolute.

    ``own_pid_refused``: why this runtime cannot give a container a PID namespace of its own
    (None: it can).
    """
    index = next((i for i, c in enumerate(pod.containers) if c.name == container.name), None)
    where = f"spec.containers[{index if index is not None else json.dumps(container.name)}]"
    causes: list[tuple[str, str]] = []
    if container.pid_namespace not in PID_NAMESPACES:
        allowed = ", ".join(json.dumps(v) for v in sorted(PID_NAMESPACES))
        causes.append(
            (
                f"{where}.pidNamespace",
                f"Unsupported value: {json.dumps(container.pid_namespace)[:80]}: "
                f"supported values: {allowed}",
            )
        )
    elif container.pid_namespace == PID_CONTAINER and own_pid_refused is not None:
        causes.append((f"{where}.pidNamespace", f"Forbidden: {own_pid_refused}"))
    if container.log_path and not os.path.isabs(container.log_path):
        causes.append(
            (
                f"{where}.logPath",
                f"Invalid value: {json.dumps(container.log_path)[:80]}: must be an absolute path",
            )
        )
    if causes:
        raise InvalidPod(pod.name, causes)


class LogFile:
    """A container's CRI log file (``ContainerSpec.log_path``), appended to.

    Opened ``O_APPEND`` (made ``0640`` when missing; its directory is the caller's to make),
    and read-write, so that a runtime resuming after a restart can read back what it wrote.
    ``write`` is one ``os.write`` loop on the caller's thread: local appends, as containerd
    does them. A failed write is logged (once) and dropped; the container's output is still
    drained (containerd: "Continue on write error to drain the container output").
    """

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        self._failed = False

    @classmethod
    def open(cls, path: str) -> LogFile:
        """Blocking: run it in a worker thread.

        Raises:
            BackendError: the file cannot be made or opened.
        """
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise BackendError(f'failed to create and open log file "{path}": {exc}') from exc
        return cls(path, fd)

    @classmethod
    async def open_async(cls, path: str, executor: Executor | None = None) -> LogFile:
        """:meth:`open` in ``executor`` (None: the loop's default); a caller cancelled
        meanwhile leaves no descriptor open."""
        future = asyncio.get_running_loop().run_in_executor(executor, cls.open, path)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(_close_opened)
            raise

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and self.fd >= 0:
            try:
                n = os.write(self.fd, view)
            except InterruptedError:
                continue
            except OSError as exc:
                if not self._failed:
                    self._failed = True
                    _log.warning(
                        "container log %s: write failed, output dropped: %s", self.path, exc
                    )
                return
            view = view[n:]

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            with contextlib.suppress(OSError):
                os.close(fd)


def _close_opened(future: asyncio.Future[LogFile]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()


# --------------------------------------------------------------------------------------------
# Streams between a transport (WebSocket, SPDY) and a backend


class ByteSink(Protocol):
    """Where a backend writes a process's output (stdout or stderr of one session)."""

    async def write(self, data: bytes) -> None: ...


class Flag:
    """``asyncio.Event``'s ``set``/``clear``/``is_set``/``wait``, at a tenth of its memory.

    Every session makes several of these (its stdin :class:`Pipe` two, its :class:`Resizes`
    two, a tty exec one more). An ``asyncio.Event`` allocates a dict and a deque for waiters
    the moment it is made, about 0.75 KiB; this keeps two slots and makes its list of waiters
    only when something waits (docs/benchmarks.md, "idle memory"). Same semantics: ``set``
    wakes every waiter, and a waiter woken returns even if ``clear`` came before it ran.
    """

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        waiters, self._waiters = self._waiters, None
        for fut in waiters or ():
            if not fut.done():
                fut.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        waiters = self._waiters
        waiters.append(fut)
        try:
            await fut
            return True
        finally:
            if fut in waiters:  # cancelled before a set (a set drops the whole list)
                waiters.remove(fut)

    def waiter(self) -> asyncio.Future[None]:
        """A future done once the flag is set (at once if it is set now), for
        ``asyncio.wait`` beside other futures with no task to wait on the flag (a task costs
        about 0.6 KiB for as long as the session lasts). Cancel it to stop waiting: it is then
        forgotten. Each caller gets a future of its own, so cancelling one is safe on a flag
        that many wait on."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._value:
            fut.set_result(None)
            return fut
        if self._waiters is None:
            self._waiters = []
        waiters = self._waiters
        waiters.append(fut)

        def forget(_: asyncio.Future[None]) -> None:
            if fut in waiters:  # cancelled before a set
                waiters.remove(fut)

        fut.add_done_callback(forget)
        return fut


class _FirstDone:
    """The state of one :func:`first_done`: a waiter and a callback on each future."""

    __slots__ = ("futures", "waiter", "left", "on_failure")

    def __init__(self, futures: Sequence[asyncio.Future[Any]], on_failure: bool) -> None:
        self.futures = futures
        self.left = len(futures)
        self.on_failure = on_failure
        self.waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for fut in futures:
            fut.add_done_callback(self._one_done)
        self.waiter.add_done_callback(self._release)
        if not futures:
            self.waiter.set_result(None)

    def _one_done(self, fut: asyncio.Future[Any]) -> None:
        self.left -= 1
        if self.waiter.done():
            return
        if (
            not self.on_failure
            or not self.left
            or (not fut.cancelled() and fut.exception() is not None)
        ):
            self.waiter.set_result(None)

    def _release(self, _: asyncio.Future[None]) -> None:
        for fut in self.futures:
            fut.remove_done_callback(self._one_done)


def first_done(
    futures: Sequence[asyncio.Future[Any]], *, on_failure: bool = False
) -> asyncio.Future[None]:
    """A future done once one of ``futures`` is done; with ``on_failure``, once one has
    failed (raised, not cancelled) or all are done. ``asyncio.wait``'s FIRST_COMPLETED and
    FIRST_EXCEPTION without its two coroutine frames, set and closure, which a session keeps
    for its whole life (about 0.6 KiB a wait; docs/benchmarks.md, idle memory). Its callbacks
    leave the futures once it is done or cancelled. It neither cancels nor retrieves them."""
    return _FirstDone(futures, on_failure).waiter


# Queued stdin chunks are joined up to this size. Larger writes cost more than they save: the
# engine's socket takes about 200 KiB at a time, and asyncio copies and shifts whatever it
# could not send (exec stdin through kubectl 1.33, server CPU per 512 MiB: unbounded joins
# 1.26-1.35 s, 128 KiB 1.0-1.1 s, 64 KiB 0.98-1.0 s, 32 KiB 0.99-1.03 s).
JOIN_LIMIT = 64 * 1024
# A pipe or FIFO takes queued chunks unjoined, in one writev of up to this many bytes (a
# quarter of a containerd FIFO's 1 MiB: fewer wake-ups of the reader than 64 KiB writes, and
# little left over when the pipe has less room) and at most this many chunks (IOV_MAX is 1024).
WRITEV_LIMIT = 256 * 1024
_IOV_CHUNKS = 256


class Pipe:
    """A bounded async byte pipe from a transport to a backend (a session's stdin).

    ``feed`` waits while more than ``limit`` bytes are buffered, so a client cannot make the
    server hold more than that for a process that does not read; ``close`` is end-of-file.
    """

    def __init__(self, limit: int = 1 << 20) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._limit = limit
        self._closed = False
        self._readable = Flag()
        self._writable = Flag()
        self._writable.set()
        #: Told each chunk as the backend reads it (the session's byte count and recording).
        self.tap: Callable[[bytes], None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    async def feed(self, data: bytes) -> None:
        if not self.feed_nowait(data):
            await self._writable.wait()

    def feed_nowait(self, data: bytes) -> bool:
        """Queue ``data`` without waiting; False once over the limit (pause the source)."""
        if self._closed or not data:
            return True
        self._chunks.append(data)
        self._size += len(data)
        self._readable.set()
        if self._size > self._limit:
            self._writable.clear()
            return False
        return True

    async def wait_writable(self) -> None:
        await self._writable.wait()

    def close(self) -> None:
        self._closed = True
        self._readable.set()
        self._writable.set()

    async def read(self) -> bytes:
        """The next chunk, or ``b""`` once closed and drained.

        Small chunks that queued up while the backend was busy are joined, up to
        ``JOIN_LIMIT`` bytes, so that they go on as one write.
        """
        # no queued chunk is empty, so JOIN_LIMIT chunks never fit: no count bound here
        chunks = await self._take(JOIN_LIMIT, JOIN_LIMIT)
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if self.tap is not None:
            self.tap(data)
        return data

    async def read_chunks(self, limit: int = WRITEV_LIMIT) -> list[bytes]:
        """The chunks queued now, whole and in order, up to ``limit`` bytes (always at least
        one), or ``[]`` once closed and drained.

        For a backend that writes them with one ``writev`` (:meth:`FdWriter.write_chunks`):
        nothing is joined, so no byte is copied on the way to the process's pipe.
        """
        chunks = await self._take(limit, _IOV_CHUNKS)
        if self.tap is not None:
            for chunk in chunks:
                self.tap(chunk)
        return chunks

    async def _take(self, limit: int, most: int) -> list[bytes]:
        """Wait for a chunk; take it and those after it that fit in ``limit`` bytes, at most
        ``most`` chunks in all (``[]`` once closed and drained)."""
        while not self._chunks:
            if self._closed:
                return []
            self._readable.clear()
            await self._readable.wait()
        queue = self._chunks
        chunks = [queue.popleft()]
        size = len(chunks[0])
        while queue and len(chunks) < most and size + len(queue[0]) <= limit:
            chunks.append(queue.popleft())
            size += len(chunks[-1])
        self._size -= size
        if self._size <= self._limit:
            self._writable.set()
        return chunks


class Resizes:
    """Terminal sizes from the client, coalesced: the latest size wins, never a queue.

    A client can send sizes far faster than a runtime applies them (one engine API call
    each); a queue of them is the CVE-2022-23471 class of bug. ``put`` only replaces the
    latest size, and a backend iterating this gets the newest size not yet delivered, so at
    most one runtime call per session is pending and sizes it was too slow for are skipped.
    """

    def __init__(self) -> None:
        self.latest: TerminalSize | None = None
        self._fresh = False  # ``latest`` has not been delivered yet
        self._closed = False
        self._changed = Flag()
        self._arrived = Flag()  # a first size came, or none ever will
        #: Told each size as it comes (the session's recording).
        self.tap: Callable[[TerminalSize], None] | None = None
        self._follower: SizeFollower | None = None

    def put(self, size: TerminalSize) -> None:
        if self.tap is not None and size != self.latest:
            self.tap(size)
        self.latest = size
        self._fresh = True
        self._changed.set()
        if size.width and size.height:
            self._arrived.set()
        if self._follower is not None:
            self._follower.changed()

    def close(self) -> None:
        self._closed = True
        self._changed.set()
        self._arrived.set()

    def follow(self, apply: Callable[[TerminalSize], Awaitable[None]]) -> SizeFollower:
        """Apply each size not yet delivered with ``apply``, one call at a time, the newest
        size first, as iterating does, but with no task waiting between sizes: a task exists
        only while a call is running (an iterating task costs about 1.3 KiB for the life of
        the session; docs/benchmarks.md, idle memory). Stop it with
        :meth:`SizeFollower.stop`. One follower at a time."""
        assert self._follower is None, "already followed"
        follower = self._follower = SizeFollower(self, apply)
        follower.changed()
        return follower

    def _take(self) -> TerminalSize | None:
        """The size not yet delivered, now delivered; None if there is none."""
        if not self._fresh:
            return None
        self._fresh = False
        return self.latest

    def _unfollow(self, follower: SizeFollower) -> None:
        if self._follower is follower:
            self._follower = None

    async def first(self, seconds: float) -> TerminalSize | None:
        """The client's first usable size (neither side 0), waited for at most ``seconds``;
        None when none came by then or the session ended. It stays undelivered: a backend
        that applied it when the process started says so with :meth:`delivered`."""
        await wait_event(self._arrived, seconds)
        latest = self.latest
        return latest if latest is not None and latest.width and latest.height else None

    def delivered(self, size: TerminalSize) -> None:
        """``size`` was applied another way (at the start of the process): an iterator skips
        it, unless a newer size came meanwhile."""
        if self.latest == size:
            self._fresh = False

    def __aiter__(self) -> Resizes:
        return self

    async def __anext__(self) -> TerminalSize:
        while not self._fresh:
            if self._closed:
                raise StopAsyncIteration
            self._changed.clear()
            await self._changed.wait()
        assert self.latest is not None
        self._fresh = False
        return self.latest


#: The exit code of a process killed by SIGKILL (128 + 9), as a shell and the kubelet report it:
#: what an exec killed with its container ends with, and a container stopped before it started.
KILLED = 128 + signal.SIGKILL


class SizeFollower:
    """The sizes of one :class:`Resizes`, applied as they come (:meth:`Resizes.follow`)."""

    __slots__ = ("sizes", "apply", "task", "closed")

    def __init__(self, sizes: Resizes, apply: Callable[[TerminalSize], Awaitable[None]]) -> None:
        self.sizes = sizes
        self.apply = apply
        self.task: asyncio.Task[None] | None = None
        self.closed = False

    def changed(self) -> None:
        """A size came (or the follower began, or a call ended): apply it unless a call runs."""
        if self.task is not None or self.closed:
            return
        size = self.sizes._take()
        if size is not None:
            self.task = asyncio.get_running_loop().create_task(self._apply(size))

    async def _apply(self, size: TerminalSize) -> None:
        try:
            await self.apply(size)
        except Exception:  # a runtime's bug: told here, the session goes on
            _log.exception("applying a terminal size failed")
        finally:
            self.task = None
            self.changed()  # a newer size came meanwhile

    def stop(self) -> asyncio.Task[None] | None:
        """Stop following; the call that runs, if one does, cancelled, for the caller to
        wait for with its other tasks."""
        self.closed = True
        self.sizes._unfollow(self)
        task = self.task
        if task is not None:
            task.cancel()
        return task


class FdWriter:
    """Non-blocking writes to a pipe or a pty master; raises BrokenPipeError once the reader
    has gone."""

    def __init__(self, fd: int, alive: Callable[[], bool] = lambda: True) -> None:
        self.fd = fd
        self._alive = alive  # False once the fd is closed elsewhere: its number may be reused
        os.set_blocking(fd, False)

    async def write(self, data: bytes) -> None:
        await self.write_chunks([data])

    async def write_chunks(self, chunks: Sequence[bytes]) -> None:
        """Write ``chunks`` in order with ``writev`` (nothing joined), waiting whenever the
        pipe is full."""
        bufs: list[bytes | memoryview] = list(chunks)
        while bufs:
            if not self._alive():
                raise BrokenPipeError(errno.EPIPE, "the process's input is closed")
            try:
                n = os.writev(self.fd, bufs)
            except BlockingIOError:
                await wait_fd(self.fd, readable=False)
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:
                    raise BrokenPipeError(errno.EPIPE, "the terminal is gone") from exc
                raise
            done = 0
            while done < len(bufs) and n >= len(bufs[done]):
                n -= len(bufs[done])
                done += 1
            del bufs[:done]
            if n:
                bufs[0] = memoryview(bufs[0])[n:]


async def wait_fd(fd: int, *, readable: bool) -> None:
    """Until the event loop says ``fd`` is readable (or writable)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if readable:
        loop.add_reader(fd, wake)
    else:
        loop.add_writer(fd, wake)
    try:
        await ready
    finally:
        if readable:
            loop.remove_reader(fd)
        else:
            loop.remove_writer(fd)


class OutputReader(Protocol):
    """One output of a container's process (a pipe, a pty, a FIFO): ``b""`` at its end."""

    async def read(self) -> bytes: ...


#: Clients attached to a container: (stdout sink, stderr sink); a tty merges both into stdout.
Listeners = list[tuple[ByteSink | None, ByteSink | None]]


async def pump_output(
    outputs: Sequence[tuple[OutputReader, int]], listeners: Listeners, log: LogFile | None
) -> None:
    """Read each output of a container (stream 1: stdout, 2: stderr) until it ends, writing
    every chunk to its CRI log file as it comes (a line not ended when its stream ends is
    written as a partial line, as containerd does) and to every attached client; a client
    whose sink fails is dropped, the others go on."""
    writer = CriLogWriter() if log is not None else None

    async def one(reader: OutputReader, stream: int) -> None:
        name = STDOUT if stream == 1 else STDERR
        try:
            while data := await reader.read():
                if writer is not None and log is not None:
                    log.write(writer.feed(name, data))
                await fan_out(data, stream)
        finally:
            if writer is not None and log is not None:
                log.write(writer.flush(name))

    async def fan_out(data: bytes, stream: int) -> None:
        for listener in list(listeners):
            sink = listener[0] if stream == 1 else listener[1]
            if sink is None:
                continue
            try:
                await sink.write(data)
            except (ConnectionError, OSError, RuntimeError):
                with contextlib.suppress(ValueError):
                    listeners.remove(listener)

    await asyncio.gather(*(one(r, s) for r, s in outputs))


async def attach_until_exit(
    listeners: Listeners,
    io: StdIO,
    exited: asyncio.Event,
    sizes: Coroutine[Any, Any, None] | None,
    stdin: Coroutine[Any, Any, None] | None,
    *,
    stdin_ends_it: bool,
) -> None:
    """One attach to a container whose output :func:`pump_output` fans out: ``io``'s sinks
    get the output until the container has exited, or, with ``stdin_ends_it`` (a terminal's
    ``stdinOnce``), until ``stdin`` (the copy of this client's input) has ended. ``sizes``
    applies the client's terminal sizes meanwhile. Both are stopped at the end, however it
    comes (the client leaving included)."""
    listener = (io.stdout, io.stderr)
    listeners.append(listener)
    helpers: list[asyncio.Task[Any]] = []
    if sizes is not None:
        helpers.append(asyncio.create_task(sizes))
    ended = asyncio.create_task(exited.wait())
    helpers.append(ended)
    waits: list[asyncio.Task[Any]] = [ended]
    if stdin is not None:
        feeder = asyncio.create_task(stdin)
        helpers.append(feeder)
        if stdin_ends_it:
            waits.append(feeder)
    try:
        await first_done(waits)
    finally:
        with contextlib.suppress(ValueError):
            listeners.remove(listener)
        for t in helpers:
            t.cancel()
        for t in helpers:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await t


@dataclass(slots=True)
class StdIO:
    """A session's streams, as the client asked for them (``None`` = not requested)."""

    stdin: Pipe | None = None
    stdout: ByteSink | None = None
    stderr: ByteSink | None = None
    resize: Resizes | None = None


class StreamingRuntime(Runtime, Protocol):
    """A runtime that can also exec, attach and port-forward."""

    async def exec(self, container_id: str, cmd: Sequence[str], io: StdIO, *, tty: bool) -> int:
        """Run ``cmd`` in the container wired to ``io``; return its exit code (0-255).

        Cancellation (the client went away) must stop the process and free everything.
        """
        ...

    async def attach(self, container_id: str, io: StdIO, *, tty: bool) -> None: ...

    async def container_stopped(self, container_id: str) -> str | None:
        """``None`` while the container runs; once it does not, what became of it, for the
        status of an exec that had to end (``container "main" exited with code 137
        (OOMKilled)``, ``container "main" was removed``).

        Raises:
            BackendError: the runtime cannot tell now (the engine is down); not a stop.
        """
        ...

    async def sandbox_ready(self, sandbox_id: str) -> bool:
        """Whether the pod's sandbox still runs (a forward into a deleted pod must end)."""
        ...

    async def dial(self, sandbox_id: str, port: int) -> socket.socket:
        """A TCP connection to ``localhost:port`` as seen inside the pod (non-blocking socket).

        Holds no thread while the connection is made, so a caller's timeout (``wait_for``)
        really ends it. Cancellation closes whatever was opened.

        Raises:
            BackendError: for every failure (nothing listens there, the pod is gone, the
                engine failed); no other exception type.
        """
        ...


async def wait_event(event: asyncio.Event | Flag, seconds: float) -> bool:
    """Wait at most ``seconds`` for ``event``; whether it is set.

    Not ``asyncio.wait_for``: on Python 3.11 that returns normally when the task is cancelled
    just as the event is set or the time runs out, and the cancellation is lost. A tty exec
    cancelled while it waited for its first size then ran on with no client, its process
    alive (found by soak/fuzz.py: one session left in a million frames).
    """
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=seconds)
    finally:
        waiter.cancel()
    return event.is_set()


def loopback_sockets() -> list[tuple[socket.socket, str]]:
    """Unconnected non-blocking TCP sockets for ``localhost`` (IPv4 first, then IPv6).

    Call it in the network namespace to dial in (a socket keeps the namespace it was made in).
    """
    out: list[tuple[socket.socket, str]] = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 in this namespace
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        out.append((sock, host))
    return out


async def connect_first(candidates: list[tuple[socket.socket, str]], port: int) -> socket.socket:
    """Connect the first of ``candidates`` that accepts ``port``, on the event loop.

    Closes every other socket, also when cancelled.

    Raises:
        BackendError: none of them connected.
    """
    loop = asyncio.get_running_loop()
    last: OSError | None = None
    try:
        while candidates:
            sock, host = candidates[0]
            try:
                await loop.sock_connect(sock, (host, port))
            except OSError as exc:
                last = exc
                candidates.pop(0)[0].close()
                continue
            candidates.pop(0)
            return sock
    finally:
        for sock, _ in candidates:
            sock.close()
    raise BackendError(f"dial localhost:{port}: {last or 'no usable address'}")


# --------------------------------------------------------------------------------------------
# Host helpers of the runtimes whose containers are processes on this host (Docker, containerd)

_CLONE_NEWNET = 0x40000000
_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, _CLONE_NEWNET)
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def sockets_in_netns(pid: int) -> list[tuple[socket.socket, str]]:
    """Unconnected loopback sockets in the network namespace of ``pid``, made in this thread.

    The thread enters the namespace, makes the sockets and returns to its own; each socket
    keeps the namespace it was made in. No helper binary (socat, nsenter) is needed.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        os.close(own)
        raise ConnectionRefusedError(f"the pod's network namespace is gone (pid {pid})") from None
    try:
        _setns(target)
        try:
            return loopback_sockets()
        finally:
            _setns(own)  # if this failed the thread would be poisoned: let it raise loudly
    finally:
        os.close(target)
        os.close(own)


def kill_tree(pid: int) -> None:
    """SIGKILL to ``pid`` and every descendant (read from /proc): a killed exec must not leave
    the children it started (``sh -c "sleep N; ..."``) running in the pod."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    todo, victims = [pid], []
    while todo:
        p = todo.pop()
        victims.append(p)
        todo.extend(children.get(p, ()))
    for p in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)
