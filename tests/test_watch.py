"""The watch hub's and the event store's bounds (streamsrv/watch.py, streamsrv/events.py):
each is gone past here."""

from __future__ import annotations

import asyncio

import pytest

from streamsrv import watch
from streamsrv.events import EventStore
from streamsrv.pods import parse_pod
from streamsrv.watch import Expired, Hub, TooManyWatchers, changes


def everything(_: object) -> bool:
    return True


def publish(hub: Hub, n: int) -> None:
    for i in range(n):
        hub.publish(watch.MODIFIED, "Pod", "default", f"p{i}", {"i": i}, hub.next_rv())


def test_history_is_bounded_and_an_older_version_is_expired() -> None:
    hub = Hub(history=10)
    start = hub.rv
    publish(hub, 10)
    assert len(hub.since(start, "Pod", everything)) == 10  # all still kept
    publish(hub, 5)  # past the bound: the 5 oldest are gone
    with pytest.raises(Expired):
        hub.since(start, "Pod", everything)
    kept = hub.since(hub.rv - 10, "Pod", everything)
    assert [c.obj["i"] for c in kept] == [*range(5, 10), *range(5)]


async def test_a_watcher_that_falls_behind_is_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "WATCHER_QUEUE", 3)
    hub = Hub()
    with hub.watcher("Pod", everything) as w:
        publish(hub, 10)  # more than its queue holds, nobody reading
        assert w.queue.qsize() == 3 and w.overflowed
        got = [c async for c in changes(w, 5.0, None)]
    assert len(got) == 2  # what it had, then the end (its client watches again)


def test_watchers_are_bounded() -> None:
    hub = Hub(max_watchers=2)
    with (
        hub.watcher("Pod", everything),
        hub.watcher("Pod", everything),
        pytest.raises(TooManyWatchers),
        hub.watcher("Pod", everything),
    ):
        pass
    assert hub.watchers == 0
    with hub.watcher("Pod", everything):
        assert hub.watchers == 1


def test_events_are_bounded_and_repeats_counted() -> None:
    hub = Hub()
    store = EventStore(hub, limit=5)
    pod = parse_pod(
        {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
    )
    for i in range(8):
        store.record(pod, "Started", f"message {i}")
    kept = store.list("default")
    assert [e["message"] for e in kept] == [f"message {i}" for i in range(3, 8)]
    store.record(pod, "Started", "message 7")
    assert store.list("default")[-1]["count"] == 2
    deleted = [c for c in hub.since(1, "Event", everything) if c.type == watch.DELETED]
    assert len(deleted) == 3  # watchers are told of what went


async def test_a_watch_ends_after_its_timeout() -> None:
    hub = Hub()
    with hub.watcher("Pod", everything) as w:
        async with asyncio.timeout(5):
            got = [c async for c in changes(w, 0.2, 0.05)]
    assert got and all(c is None for c in got)  # bookmarks only, then the end
