"""``StreamServer``: the library a CRI daemon embeds, and the one-time stream URLs it serves.

``get_exec`` / ``get_attach`` validate a request as the kubelet's streaming library does, keep
it behind a signed single-use token (:mod:`streamsrv.tokens`) and return the URL to hand to the
client. ``GET|POST /exec/{token}`` and ``/attach/{token}`` consume the token and upgrade the
connection (protocol.md §1).
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import logging
import ssl
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from . import portforward, remotecommand, spdy_remotecommand
from .runtime.base import StreamingRuntime
from .tokens import CacheFull, RequestCache, TokenError

log = logging.getLogger(__name__)

Kind = Literal["exec", "attach", "portforward"]


class InvalidRequest(ValueError):
    """A request the kubelet would refuse with gRPC ``InvalidArgument``."""


@dataclass(frozen=True, slots=True)
class ExecRequest:
    container_id: str
    cmd: tuple[str, ...]
    stdin: bool = False
    stdout: bool = True
    stderr: bool = False
    tty: bool = False


@dataclass(frozen=True, slots=True)
class AttachRequest:
    container_id: str
    stdin: bool = False
    stdout: bool = True
    stderr: bool = False
    tty: bool = False


@dataclass(frozen=True, slots=True)
class PortForwardRequest:
    sandbox_id: str
    ports: tuple[int, ...] = ()  # only the WebSocket channel protocol uses them


StreamRequest = ExecRequest | AttachRequest


@dataclass(slots=True)
class Config:
    """Defaults as in the kubelet's ``DefaultConfig`` (protocol.md §1.5)."""

    listen: str = "127.0.0.1:0"
    base_url: str | None = None
    ssl: ssl.SSLContext | None = None
    token_ttl: float = 60.0
    max_in_flight: int = 1000
    idle_timeout: float = 4 * 3600.0
    stream_creation_timeout: float = 30.0
    token_secret: bytes | None = None


def validate(req: StreamRequest) -> None:
    """The kubelet's checks in ``GetExec``/``GetAttach`` (protocol.md §1.2)."""
    if not req.container_id:
        raise InvalidRequest("missing required container_id")
    if req.tty and req.stderr:
        raise InvalidRequest("tty and stderr cannot both be true")
    if not (req.stdin or req.stdout or req.stderr):
        joiner = "or" if isinstance(req, ExecRequest) else "and"
        raise InvalidRequest(f"one of stdin, stdout, {joiner} stderr must be set")
    if isinstance(req, ExecRequest) and not req.cmd:
        raise InvalidRequest("missing required cmd")


@dataclass(slots=True)
class Metrics:
    sessions: Counter[tuple[str, str]] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    forwarded: int = 0

    def render(self) -> str:
        lines = [
            "# HELP streamsrv_sessions_total Stream sessions by kind and transport.",
            "# TYPE streamsrv_sessions_total counter",
        ]
        for (kind, transport), n in sorted(self.sessions.items()):
            lines.append(f'streamsrv_sessions_total{{kind="{kind}",transport="{transport}"}} {n}')
        lines += [
            "# HELP streamsrv_refused_total Upgrades refused, by reason.",
            "# TYPE streamsrv_refused_total counter",
        ]
        for reason, n in sorted(self.refused.items()):
            lines.append(f'streamsrv_refused_total{{reason="{reason}"}} {n}')
        lines += [
            "# HELP streamsrv_tasks asyncio tasks alive in the server (a leak shows here).",
            "# TYPE streamsrv_tasks gauge",
            f"streamsrv_tasks {len(asyncio.all_tasks())}",
            "# HELP streamsrv_portforward_connections_total Connections dialled in pods.",
            "# TYPE streamsrv_portforward_connections_total counter",
            f"streamsrv_portforward_connections_total {self.forwarded}",
        ]
        return "\n".join(lines) + "\n"


TLS_READ_BUFFER = 16 * 1024
TLS_BUSY_READ_BUFFER = 256 * 1024


def limit_tls_read_buffers(idle: int = TLS_READ_BUFFER, busy: int = TLS_BUSY_READ_BUFFER) -> None:
    """Give asyncio's TLS connections an ``idle``-sized read buffer, ``busy`` once they are.

    ``asyncio.sslproto.SSLProtocol`` allocates (and zero-fills) ``max_size`` (256 KiB) per
    connection as it is made: 250 MB for 1000 idle interactive sessions. `scripts/bench` row 5
    measured 328 KiB of server RSS per idle session with the default, 83 KiB with 16 KiB. But a
    client that uploads (exec stdin, port-forward) through 16 KiB reads costs a ``recv`` and a
    trip through the TLS and WebSocket layers per 16 KiB. So a connection starts with ``idle``
    and switches to ``busy`` for good once a read fills its buffer. This patches the class: it
    applies to every TLS connection of the process; calling it again only changes the sizes.
    """
    cls = asyncio.sslproto.SSLProtocol
    cls.max_size = idle
    _TLS_BUFFERS["busy"] = busy
    if getattr(cls.buffer_updated, "__streamsrv__", False):
        return
    original = cls.buffer_updated

    def buffer_updated(self: Any, nbytes: int) -> None:  # asyncio's private attributes
        original(self, nbytes)
        # A full buffer: more was waiting. The next get_buffer() allocates the larger one.
        if nbytes >= len(self._ssl_buffer) and self.max_size < _TLS_BUFFERS["busy"]:
            self.max_size = _TLS_BUFFERS["busy"]

    buffer_updated.__streamsrv__ = True  # type: ignore[attr-defined]
    cls.buffer_updated = buffer_updated  # type: ignore[method-assign]


_TLS_BUFFERS = {"busy": TLS_BUSY_READ_BUFFER}


def _text(status: int, text: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=text, headers=headers)


class StreamServer:
    """Serve exec and attach sessions for a runtime behind one-time URLs.

    Use it standalone (``async with StreamServer(runtime, Config(...))`` listens on
    ``config.listen``) or mount its routes on an existing aiohttp app with :meth:`add_routes`.
    """

    def __init__(
        self,
        runtime: StreamingRuntime,
        config: Config | None = None,
        *,
        cache: RequestCache[StreamRequest | PortForwardRequest] | None = None,
    ) -> None:
        self.runtime = runtime
        self.config = config or Config()
        if self.config.ssl is not None:
            limit_tls_read_buffers()
        if cache is None:
            cache = RequestCache(
                self.config.token_secret,
                ttl=self.config.token_ttl,
                max_in_flight=self.config.max_in_flight,
            )
        self.cache: RequestCache[StreamRequest | PortForwardRequest] = cache
        self.base_url = self.config.base_url or ""
        self.metrics = Metrics()
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ library API

    def _insert(self, kind: Kind, req: StreamRequest | PortForwardRequest) -> str:
        if isinstance(req, PortForwardRequest):
            if not req.sandbox_id:
                raise InvalidRequest("missing required pod_sandbox_id")
        else:
            validate(req)
        token = self.cache.insert(kind, req)
        return f"{self.base_url}/{kind}/{token}"

    async def get_exec(self, req: ExecRequest) -> str:
        """Validate ``req`` and return the URL that serves it once.

        Raises:
            InvalidRequest: the request breaks the kubelet's rules.
            CacheFull: too many requests in flight (HTTP 429 for a gateway).
        """
        return self._insert("exec", req)

    async def get_attach(self, req: AttachRequest) -> str:
        return self._insert("attach", req)

    async def get_port_forward(self, req: PortForwardRequest) -> str:
        return self._insert("portforward", req)

    # ------------------------------------------------------------------ HTTP side

    def add_routes(self, app: web.Application) -> None:
        for kind in ("exec", "attach", "portforward"):
            app.router.add_route("GET", f"/{kind}/{{token}}", self._handler(kind))
            app.router.add_route("POST", f"/{kind}/{{token}}", self._handler(kind))

    def _handler(self, kind: Kind) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.serve(request, kind, request.match_info["token"])

        return handle

    async def serve(self, request: web.Request, kind: Kind, token: str) -> web.StreamResponse:
        """Consume ``token`` and run the session it names on this request's connection."""
        try:
            req = self.cache.consume(kind, token)
        except TokenError:
            self.metrics.refused["token"] += 1
            return _text(404, "404 page not found\n", **{"X-Content-Type-Options": "nosniff"})
        if isinstance(req, PortForwardRequest):
            if remotecommand.is_websocket(request):
                return await portforward.serve_websocket(request, self, req)
            return await portforward.serve_spdy(request, self, req)
        if remotecommand.is_websocket(request):
            return await remotecommand.serve_websocket(request, self, kind, req)
        return await spdy_remotecommand.serve_spdy(request, self, kind, req)

    async def __aenter__(self) -> StreamServer:
        app = web.Application()
        self.add_routes(app)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        host, _, port = self.config.listen.rpartition(":")
        site = web.TCPSite(self._runner, host.strip("[]"), int(port), ssl_context=self.config.ssl)
        await site.start()
        if not self.config.base_url:
            addr = self._runner.addresses[0]
            shown = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
            scheme = "https" if self.config.ssl else "http"
            self.base_url = f"{scheme}://{shown}:{addr[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


__all__ = [
    "AttachRequest",
    "CacheFull",
    "Config",
    "ExecRequest",
    "InvalidRequest",
    "PortForwardRequest",
    "StreamRequest",
    "StreamServer",
]
