"""Counters the stream server keeps, rendered in the Prometheus text format."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class Metrics:
    sessions: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Upgrades, streams, connections and dials refused or ended by a limit, by reason.
    refused: Counter[str] = field(default_factory=Counter)
    forwarded: int = 0
    connections: int = 0

    def render(self) -> str:
        lines = [
            "# HELP streamsrv_sessions_total Stream sessions by kind and transport.",
            "# TYPE streamsrv_sessions_total counter",
        ]
        for (kind, transport), n in sorted(self.sessions.items()):
            lines.append(f'streamsrv_sessions_total{{kind="{kind}",transport="{transport}"}} {n}')
        lines += [
            "# HELP streamsrv_refused_total Upgrades, streams, connections and dials refused"
            " or ended by a limit, by reason.",
            "# TYPE streamsrv_refused_total counter",
        ]
        for reason, n in sorted(self.refused.items()):
            lines.append(f'streamsrv_refused_total{{reason="{reason}"}} {n}')
        lines += [
            "# HELP streamsrv_tasks asyncio tasks alive in the server (a leak shows here).",
            "# TYPE streamsrv_tasks gauge",
            f"streamsrv_tasks {len(asyncio.all_tasks())}",
            "# HELP streamsrv_connections Connections open (HTTP, WebSocket and SPDY).",
            "# TYPE streamsrv_connections gauge",
            f"streamsrv_connections {self.connections}",
            "# HELP streamsrv_portforward_connections_total Connections dialled in pods.",
            "# TYPE streamsrv_portforward_connections_total counter",
            f"streamsrv_portforward_connections_total {self.forwarded}",
        ]
        return "\n".join(lines) + "\n"


__all__ = ["Metrics"]
