"""What a session handler is given: the runtime, the limits, the metrics, the recorder, and a
quiet log.

Handlers (remotecommand, spdy_remotecommand, portforward) take a :class:`StreamContext`, never
the ``StreamServer``: the server imports the handlers, never the reverse
(docs/architecture.md, "Layers").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import BackendError
from .limits import Limits
from .metrics import Metrics
from .recording import Recorder, Session, new_name
from .requests import AnyRequest
from .runtime.base import Flag, StreamingRuntime

log = logging.getLogger(__name__)


class RateLimitedLog:
    """Log a kind of message at most once per ``interval`` seconds, counting the rest.

    For what a peer can make happen as often as it likes (refused streams, accept errors): the
    first one is logged, then one line per interval says how many more there were.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log ``msg`` unless ``key`` was logged less than ``interval`` ago; True if logged."""
        now = self._clock()
        if now < self._next.get(key, 0.0):
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._next[key] = now + self.interval
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            msg += " (and %d more like it in the last %.0f s)"
            args = (*args, suppressed, self.interval)
        self.logger.log(level, msg, *args)
        return True


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Its failure is its watchers' to report; none left is no "never retrieved" log."""
    if not task.cancelled():
        task.exception()


class ContainerWatch:
    """Tells sessions when the container they run in has stopped.

    One poll per watched container per ``interval`` (``runtime.container_stopped``), however
    many sessions wait on it; the poll ends with its last waiter. A runtime that cannot answer
    (the engine is down) is not a stop: the poll goes on until it can.
    """

    def __init__(self, runtime: StreamingRuntime, interval: float) -> None:
        self._runtime = runtime
        self._interval = interval
        self._polls: dict[str, asyncio.Future[str]] = {}
        self._waiters: dict[str, int] = {}

    @property
    def watched(self) -> int:
        return len(self._polls)

    async def stopped(self, container_id: str) -> str:
        """Returns, once ``container_id`` no longer runs, what became of it."""
        return await self.watch(container_id)

    def watch(self, container_id: str) -> asyncio.Future[str]:
        """A future of the caller's own, done with what became of ``container_id`` once it no
        longer runs; cancel it to stop watching (the poll ends with its last watcher).

        A future, not a task per session (docs/benchmarks.md, idle memory): each session's
        exec or attach waits on it beside the runtime's work."""
        poll = self._polls.get(container_id)
        if poll is None:
            poll = asyncio.ensure_future(self._poll(container_id))
            poll.add_done_callback(_retrieve)
            self._polls[container_id] = poll
        self._waiters[container_id] = self._waiters.get(container_id, 0) + 1
        mine: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def relay(done: asyncio.Future[str]) -> None:
            if mine.done():
                return
            if done.cancelled():
                mine.cancel()
            elif (exc := done.exception()) is not None:
                mine.set_exception(exc)
            else:
                mine.set_result(done.result())

        def release(_: asyncio.Future[str]) -> None:
            assert poll is not None
            poll.remove_done_callback(relay)
            left = self._waiters[container_id] - 1
            if left:
                self._waiters[container_id] = left
                return
            del self._waiters[container_id]
            if self._polls.get(container_id) is poll:
                del self._polls[container_id]
            poll.cancel()

        poll.add_done_callback(relay)
        mine.add_done_callback(release)
        return mine

    async def _poll(self, container_id: str) -> str:
        while True:
            await asyncio.sleep(self._interval)
            try:
                why = await self._runtime.container_stopped(container_id)
            except BackendError as exc:
                log.debug("cannot tell whether %s runs: %s", container_id[:12], exc)
                continue
            if why is not None:
                return why


@dataclass(slots=True)
class StreamContext:
    """Everything a session handler may use."""

    runtime: StreamingRuntime
    limits: Limits = field(default_factory=Limits)
    metrics: Metrics = field(default_factory=Metrics)
    containers: ContainerWatch = field(init=False)
    warnings: RateLimitedLog = field(init=False)
    #: Set when the server ends its sessions (shutdown): each ends with a status that says
    #: so, its process killed.
    stopping: Flag = field(init=False)
    #: Sessions running now, and an event set whenever there are none.
    live: int = field(init=False, default=0)
    drained: asyncio.Event = field(init=False)
    #: Records exec and attach sessions and writes the audit log (``--record DIR``).
    recorder: Recorder | None = None

    def __post_init__(self) -> None:
        self.warnings = RateLimitedLog(logging.getLogger("streamsrv"), self.limits.log_interval)
        self.containers = ContainerWatch(self.runtime, self.limits.container_poll)
        self.stopping = Flag()
        self.drained = asyncio.Event()
        self.drained.set()

    @contextlib.contextmanager
    def session(self, req: AnyRequest, client: str = "") -> Iterator[Session]:
        """Count a session as live while inside; the :class:`Session` its handler accounts on.

        Once the handler says it is :meth:`established`, its end goes into the metrics and, with
        a recorder, its recording is finished and its audit line written."""
        self.live += 1
        self.drained.clear()
        session = Session(req, client=client, name=new_name(time.time()))
        try:
            yield session
        finally:
            self.live -= 1
            if not self.live:
                self.drained.set()
            if session.established:
                session.ended_at = time.time()
                self.metrics.ended(session, time.monotonic() - session.started)
                if self.recorder is not None:
                    self.recorder.end(session)

    def established(
        self, session: Session, transport: str, protocol: str, *, record: bool = True
    ) -> None:
        """The upgrade went through: count the session, and start recording it (unless
        ``record`` is False: a session relayed to another stream server is recorded there)."""
        session.transport, session.protocol = transport, protocol
        session.established = True
        self.metrics.established(session)
        if self.recorder is not None and record:
            self.recorder.begin(session)


SHUTTING_DOWN = "the server is shutting down"

__all__ = ["SHUTTING_DOWN", "ContainerWatch", "RateLimitedLog", "StreamContext"]
