"""Resource versions and watches, as much of the apiserver's as kubectl's reflectors need.

One counter orders every change the gateway sees (pods and events share it, as etcd's revision
is shared). Each change is kept in a bounded history, so a watch that starts from a resource
version still in it gets every change after it; an older one gets ``410 Gone`` ("too old
resource version"), which makes a reflector list again. Watchers have bounded queues: a watcher
that falls that far behind is ended (its client watches again from its last version), never
allowed to make the gateway hold an unbounded backlog. docs/api.md says what is served.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

#: Changes kept for watches that start from an older version.
HISTORY = 1000
#: Changes a watcher may have waiting before it is ended.
WATCHER_QUEUE = 1000
#: Watches open at once (each is a request held open).
MAX_WATCHERS = 256

ADDED, MODIFIED, DELETED, BOOKMARK, ERROR = "ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"


@dataclass(frozen=True, slots=True)
class Change:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    kind: str  # "Pod" | "Event"
    namespace: str
    name: str
    obj: dict[str, Any]


class Expired(Exception):
    """The resource version asked for is older than the history holds."""

    def __init__(self, rv: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {rv} ({oldest})")
        self.rv, self.oldest = rv, oldest


class TooManyWatchers(Exception):
    pass


class _Watcher:
    __slots__ = ("kind", "match", "queue", "overflowed")

    def __init__(self, kind: str, match: Callable[[Change], bool]) -> None:
        self.kind = kind
        self.match = match
        self.queue: asyncio.Queue[Change | None] = asyncio.Queue(WATCHER_QUEUE)
        self.overflowed = False

    def offer(self, change: Change) -> None:
        if self.overflowed or change.kind != self.kind or not self.match(change):
            return
        try:
            self.queue.put_nowait(change)
        except asyncio.QueueFull:
            self.overflowed = True  # ended: the client watches again from what it has
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.queue.put_nowait(None)


class Hub:
    """The resource version counter, the change history and the watchers."""

    def __init__(self, history: int = HISTORY, max_watchers: int = MAX_WATCHERS) -> None:
        self.rv = 1
        self._history: deque[Change] = deque(maxlen=history)
        self._watchers: set[_Watcher] = set()
        self._max_watchers = max_watchers
        #: The oldest version a watch may start from and still see every later change.
        self._floor = 1

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def publish(
        self, type_: str, kind: str, namespace: str, name: str, obj: dict[str, Any], rv: int
    ) -> None:
        """Record a change made at version ``rv`` (from :meth:`next_rv`) and pass it on."""
        if len(self._history) == self._history.maxlen:
            self._floor = self._history[0].rv
        change = Change(rv, type_, kind, namespace, name, obj)
        self._history.append(change)
        for w in self._watchers:
            w.offer(change)

    def since(self, rv: int, kind: str, match: Callable[[Change], bool]) -> list[Change]:
        """Changes after ``rv``; :class:`Expired` if some of them are no longer kept."""
        if rv < self._floor:
            raise Expired(rv, self._floor)
        return [c for c in self._history if c.rv > rv and c.kind == kind and match(c)]

    @contextlib.contextmanager
    def watcher(self, kind: str, match: Callable[[Change], bool]) -> Iterator[_Watcher]:
        if len(self._watchers) >= self._max_watchers:
            raise TooManyWatchers(f"too many watches open (at most {self._max_watchers})")
        w = _Watcher(kind, match)
        self._watchers.add(w)
        try:
            yield w
        finally:
            self._watchers.discard(w)


async def changes(
    w: _Watcher, seconds: float, bookmark: float | None
) -> AsyncIterator[Change | None]:
    """The watcher's changes until ``seconds`` pass pass or it overflows; ``None`` is due a
    bookmark (every ``bookmark`` seconds without a change, if asked)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while True:
        left = end - loop.time()
        if left <= 0:
            return
        wait = left if bookmark is None else min(left, bookmark)
        try:
            async with asyncio.timeout(wait):
                change = await w.queue.get()
        except TimeoutError:
            if bookmark is not None and end - loop.time() > 0:
                yield None
            continue
        if change is None:  # overflowed
            return
        yield change
