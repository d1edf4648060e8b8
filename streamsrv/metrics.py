"""What the stream server counts, exposed through ``prometheus-client`` (docs/architecture.md,
"Metrics").

The hot path only adds to plain ints and ``Counter`` dicts (no lock, no call into the
client library per chunk); a collector turns them into metric families when ``/metrics`` is
scraped, adding the bytes of sessions still running to those of sessions that ended, so the
byte counters move while a session runs. Histograms (session duration, runtime call latency)
are ``prometheus_client`` histograms, observed once per session or runtime call.

Each :class:`Metrics` has its own registry: two servers in one process (tests, a daemon that
embeds two) never share or collide on metrics.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.registry import Collector


class LiveSession(Protocol):
    """What the collector reads off a session that is still running."""

    @property
    def kind(self) -> str: ...

    transport: str
    bytes_in: int
    bytes_out: int


#: Session durations: a ``kubectl exec -- true`` is ~0.1 s, a shell hours.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)
#: Runtime calls: a process-runtime list is ~1 ms, a Docker create ~50 ms, a pull minutes.
CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)


class Metrics:
    """The counters and gauges of one stream server (and of the gateway around it)."""

    def __init__(self) -> None:
        #: Sessions established (upgrade done), by (kind, transport).
        self.sessions: Counter[tuple[str, str]] = Counter()
        #: Upgrades, streams, connections and dials refused or ended by a limit, by reason.
        self.refused: Counter[str] = Counter()
        #: Sessions that ended in an error of the runtime's or ours, by reason.
        self.errors: Counter[str] = Counter()
        #: Bytes of sessions that ended, by (kind, direction): "in" is client to container.
        self.bytes: Counter[tuple[str, str]] = Counter()
        #: Recordings finished, by result: complete, truncated, failed.
        self.recordings: Counter[str] = Counter()
        self.tokens_issued = 0
        self.forwarded = 0
        self.connections = 0
        #: Established sessions still running.
        self.live: set[LiveSession] = set()
        #: The token cache's use, by purpose: (requests in flight, capacity); set by the server.
        self.token_usage: Callable[[], Mapping[str, tuple[int, int]]] | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        self.duration = Histogram(
            "streamsrv_session_duration_seconds",
            "How long established sessions ran, by kind.",
            ["kind"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.runtime_calls = Histogram(
            "streamsrv_runtime_call_duration_seconds",
            "Runtime (engine) calls, by call: how long each took, failures included.",
            ["call"],
            buckets=CALL_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Collector(self))

    # -- sessions

    def established(self, session: LiveSession) -> None:
        self.sessions[(session.kind, session.transport)] += 1
        self.live.add(session)

    def ended(self, session: LiveSession, seconds: float) -> None:
        if session not in self.live:
            return
        self.live.discard(session)
        self.bytes[(session.kind, "in")] += session.bytes_in
        self.bytes[(session.kind, "out")] += session.bytes_out
        self.duration.labels(session.kind).observe(seconds)

    # -- exposition

    def render(self) -> str:
        """The Prometheus text format (version 0.0.4)."""
        return generate_latest(self.registry).decode()

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The body and content type for a scrape that sent ``Accept: accept`` (the
        OpenMetrics format when the scraper asks for it)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class _Collector(Collector):
    """Turns :class:`Metrics`' plain counters into metric families at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def describe(self) -> Iterable[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        m = self.m
        total = CounterMetricFamily(
            "streamsrv_sessions", "Stream sessions established, by kind and transport.",
            labels=["kind", "transport"],
        )  # fmt: skip
        for (kind, transport), n in sorted(m.sessions.items()):
            total.add_metric([kind, transport], n)
        yield total
        active: Counter[tuple[str, str]] = Counter()
        moved = Counter(m.bytes)
        for s in list(m.live):
            active[(s.kind, s.transport)] += 1
            moved[(s.kind, "in")] += s.bytes_in
            moved[(s.kind, "out")] += s.bytes_out
        gauge = GaugeMetricFamily(
            "streamsrv_active_sessions", "Stream sessions running now, by kind and transport.",
            labels=["kind", "transport"],
        )  # fmt: skip
        for (kind, transport), n in sorted(active.items()):
            gauge.add_metric([kind, transport], n)
        yield gauge
        moved_family = CounterMetricFamily(
            "streamsrv_session_bytes",
            "Bytes carried by sessions, by kind and direction (in: client to container).",
            labels=["kind", "direction"],
            unit="bytes",
        )
        for (kind, direction), n in sorted(moved.items()):
            moved_family.add_metric([kind, direction], n)
        yield moved_family
        yield _by(
            "streamsrv_refused",
            "Upgrades, streams, connections and dials refused or ended by a limit, by reason.",
            "reason",
            m.refused,
        )
        yield _by(
            "streamsrv_session_errors",
            "Sessions ended by an error of the runtime's or the server's, by reason.",
            "reason",
            m.errors,
        )
        yield _by(
            "streamsrv_recordings",
            "Session recordings finished, by result (complete, truncated, failed).",
            "result",
            m.recordings,
        )
        issued = CounterMetricFamily("streamsrv_tokens_issued", "One-time stream URLs issued.")
        issued.add_metric([], m.tokens_issued)
        yield issued
        if m.token_usage is not None:
            held = GaugeMetricFamily(
                "streamsrv_tokens_in_flight",
                "One-time stream URLs issued and not yet used or expired, by purpose.",
                labels=["purpose"],
            )
            cap = GaugeMetricFamily(
                "streamsrv_tokens_capacity",
                "How many one-time stream URLs each purpose may have in flight.",
                labels=["purpose"],
            )
            for purpose, (n, c) in sorted(m.token_usage().items()):
                held.add_metric([purpose], n)
                cap.add_metric([purpose], c)
            yield held
            yield cap
        tasks = GaugeMetricFamily(
            "streamsrv_tasks", "asyncio tasks alive in the server (a leak shows here)."
        )
        try:
            tasks.add_metric([], len(asyncio.all_tasks()))
        except RuntimeError:  # scraped from outside the loop (a test)
            tasks.add_metric([], 0)
        yield tasks
        conns = GaugeMetricFamily(
            "streamsrv_connections", "Connections open (HTTP, WebSocket and SPDY)."
        )
        conns.add_metric([], m.connections)
        yield conns
        dialled = CounterMetricFamily(
            "streamsrv_portforward_connections", "Connections dialled in pods."
        )
        dialled.add_metric([], m.forwarded)
        yield dialled


def _by(name: str, doc: str, label: str, counts: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, n in sorted(counts.items()):
        family.add_metric([key], n)
    return family


def instrument(target: Any, calls: Iterable[str], histogram: Histogram) -> None:
    """Time ``target``'s coroutine methods named in ``calls`` into ``histogram`` (label
    ``call``), by binding a timed wrapper on the instance: the object keeps its class, so
    ``isinstance`` checks on it still hold. For the runtimes the application itself made
    (``streamsrv serve``/``cri``); an embedder's runtime is left alone."""
    for name in calls:
        method = getattr(target, name, None)
        if method is None or not inspect.iscoroutinefunction(method):
            continue
        setattr(target, name, _timed(method, histogram.labels(name)))


def _timed(method: Callable[..., Awaitable[Any]], child: Any) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.monotonic()
        try:
            return await method(*args, **kwargs)
        finally:
            child.observe(time.monotonic() - t0)

    return timed


__all__ = ["LiveSession", "Metrics", "instrument"]
