"""What a session handler is given: the runtime, the limits, the metrics, and a quiet log.

Handlers (remotecommand, spdy_remotecommand, portforward) take a :class:`StreamContext`, never
the ``StreamServer``: the server imports the handlers, never the reverse
(docs/architecture.md, "Layers").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .limits import Limits
from .metrics import Metrics
from .runtime.base import StreamingRuntime


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


@dataclass(slots=True)
class StreamContext:
    """Everything a session handler may use."""

    runtime: StreamingRuntime
    limits: Limits = field(default_factory=Limits)
    metrics: Metrics = field(default_factory=Metrics)
    warnings: RateLimitedLog = field(init=False)

    def __post_init__(self) -> None:
        self.warnings = RateLimitedLog(logging.getLogger("streamsrv"), self.limits.log_interval)


__all__ = ["RateLimitedLog", "StreamContext"]
