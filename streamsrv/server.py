"""``StreamServer``: the library a CRI daemon embeds, and the one-time stream URLs it serves.

``get_exec`` / ``get_attach`` / ``get_port_forward`` validate a request as the kubelet's
streaming library does, keep it behind a signed single-use token (:mod:`streamsrv.tokens`) and
return the URL to hand to the client. ``GET|POST /exec/{token}``, ``/attach/{token}`` and
``/portforward/{token}`` consume the token and upgrade the connection (docs/protocol.md §1).

The server imports the handlers (:mod:`.remotecommand`, :mod:`.spdy_remotecommand`,
:mod:`.portforward`) and gives each a :class:`~streamsrv.context.StreamContext`; they never
import it back (docs/architecture.md, "Layers").
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import portforward, remotecommand, spdy_remotecommand
from .connections import GuardedSite, runner_kwargs
from .context import SHUTTING_DOWN, StreamContext
from .limits import Limits
from .metrics import Metrics
from .recording import RecordConfig, Recorder, Recording
from .requests import (
    AnyRequest,
    AttachRequest,
    ExecRequest,
    InvalidRequest,
    Kind,
    PortForwardRequest,
    StreamRequest,
    kind_of,
    validate,
)
from .runtime.base import StreamingRuntime, wait_event
from .tokens import CacheFull, RequestCache, TokenError
from .transport import is_websocket

log = logging.getLogger(__name__)

#: Token purposes with their own capacity (``Limits.max_browser_tokens``).
BROWSER = "browser"
#: Seconds sessions ended by a shutdown get to send their status and close.
STOP_WAIT = 10.0


#: A session served elsewhere: the request's connection and what it asked for.
Relay = Callable[[web.Request, AnyRequest], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class Config:
    """Where and how the stream server listens; every bound is in ``limits``."""

    listen: str = "127.0.0.1:0"
    base_url: str | None = None
    ssl: ssl.SSLContext | None = None
    token_secret: bytes | None = None
    limits: Limits = field(default_factory=Limits)
    #: Record exec and attach sessions and write an audit line per session there
    #: (docs/recording.md); None records nothing.
    record: RecordConfig | None = None
    #: aiohttp's access log line per request (``streamsrv serve -v`` and ``cri -v`` turn it
    #: on). Off by default: each session has its audit line already, the line would carry the
    #: session's one-time token, and formatting it costs a few percent of a short session.
    access_log: bool = False


def _text(status: int, text: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=text, headers=headers)


def peer(request: web.Request) -> str:
    """The client's address as ``host:port`` (``[v6]:port``), for the audit log."""
    transport = request.transport
    name = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(name, tuple) and len(name) >= 2:
        host = f"[{name[0]}]" if ":" in str(name[0]) else str(name[0])
        return f"{host}:{name[1]}"
    return request.remote or ""


class StreamServer:
    """Serve exec, attach and port-forward sessions for a runtime behind one-time URLs.

    Use it standalone (``async with StreamServer(runtime, Config(...))`` listens on
    ``config.listen``) or mount its routes on an existing aiohttp app with :meth:`add_routes`.
    Nothing here changes process-wide state: an embedding daemon's own TLS connections, event
    loop and thread pools are left as they are.
    """

    def __init__(
        self,
        runtime: StreamingRuntime,
        config: Config | None = None,
        *,
        cache: RequestCache[AnyRequest] | None = None,
    ) -> None:
        self.runtime = runtime
        self.config = config or Config()
        limits = self.config.limits
        if cache is None:
            cache = RequestCache(
                self.config.token_secret,
                ttl=limits.token_ttl,
                max_in_flight=limits.max_tokens,
                capacity={BROWSER: limits.max_browser_tokens},
            )
        self.cache: RequestCache[AnyRequest] = cache
        self.base_url = self.config.base_url or ""
        self.metrics = Metrics()
        self.metrics.token_usage = self.cache.usage
        self.recorder: Recorder | None = None
        if self.config.record is not None:
            self.recorder = Recorder(self.config.record, on_recorded=self._recorded)
        self.context = StreamContext(runtime, limits, self.metrics, recorder=self.recorder)
        self._started = False
        self._runner: web.AppRunner | None = None
        #: Set by :meth:`shutdown`: new sessions are refused.
        self.closing = False
        #: Where sessions go instead of this process's runtime, when they are another stream
        #: server's (a gateway fronting CRI endpoints proxies them there; docs/cri.md).
        self.relay: Relay | None = None

    @property
    def limits(self) -> Limits:
        return self.config.limits

    # ------------------------------------------------------------------ library API

    def issue(self, req: AnyRequest, *, purpose: str = "default") -> str:
        """Validate ``req`` and return the URL that serves it once.

        ``purpose`` picks the token capacity it counts against (``"browser"`` for the web
        page's sessions, so they can never starve kubectl's and CRI callers').

        Raises:
            InvalidRequest: the request breaks the kubelet's rules.
            CacheFull: too many requests of this purpose in flight (HTTP 429).
        """
        validate(req)
        kind = kind_of(req)
        try:
            token = self.cache.insert(kind, req, purpose=purpose)
        except CacheFull:
            self.metrics.refused["token-cache-full"] += 1
            raise
        self.metrics.tokens_issued += 1
        return f"{self.base_url}/{kind}/{token}"

    async def get_exec(self, req: ExecRequest) -> str:
        """Validate ``req`` and return the URL that serves it once (see :meth:`issue`)."""
        return self.issue(req)

    async def get_attach(self, req: AttachRequest) -> str:
        return self.issue(req)

    async def get_port_forward(self, req: PortForwardRequest) -> str:
        return self.issue(req)

    # ------------------------------------------------------------------ HTTP side

    def add_routes(self, app: web.Application) -> None:
        """Mount the one-time URLs on ``app``; its startup and cleanup start and finish the
        recorder, if there is one."""
        for kind in ("exec", "attach", "portforward"):
            app.router.add_route("GET", f"/{kind}/{{token}}", self._handler(kind))
            app.router.add_route("POST", f"/{kind}/{{token}}", self._handler(kind))

        async def start(_: web.Application) -> None:
            await self.start()

        async def finish(_: web.Application) -> None:
            await self.close_recorder()

        app.on_startup.append(start)
        app.on_cleanup.append(finish)

    async def start(self) -> None:
        """Make the recording directory and start its retention sweeps (once)."""
        if not self._started and self.recorder is not None:
            self._started = True
            await self.recorder.start()

    async def close_recorder(self) -> None:
        """Finish the recordings of sessions that ended (call after :meth:`shutdown`)."""
        if self.recorder is not None and self._started:
            self._started = False
            await self.recorder.close()

    def _recorded(self, rec: Recording) -> None:
        result = "failed" if rec.failed else "truncated" if rec.truncated else "complete"
        self.metrics.recordings[result] += 1

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
        return await self.serve_request(request, req)

    async def serve_request(self, request: web.Request, req: AnyRequest) -> web.StreamResponse:
        """Run ``req`` on this request's connection, with no token.

        For a caller that has authenticated the client itself (the gateway's own
        ``pods/exec`` routes): nothing is held in the token cache for it.

        Raises:
            InvalidRequest: the request breaks the kubelet's rules.
        """
        validate(req)
        ctx = self.context
        if self.closing:
            self.metrics.refused["shutting-down"] += 1
            return _text(503, f"{SHUTTING_DOWN}\n", **{"Retry-After": "5"})
        if self.relay is not None:
            return await self.relay(request, req)
        with ctx.session(req, client=peer(request)) as account:
            if isinstance(req, PortForwardRequest):
                if is_websocket(request):
                    return await portforward.serve_websocket(request, ctx, req, account)
                return await portforward.serve_spdy(request, ctx, req, account)
            kind = kind_of(req)
            if is_websocket(request):
                return await remotecommand.serve_websocket(request, ctx, kind, req, account)
            return await spdy_remotecommand.serve_spdy(request, ctx, kind, req, account)

    async def shutdown(self, grace: float | None = None) -> int:
        """Refuse new sessions (503), give live ones ``grace`` seconds (default
        ``Limits.shutdown_grace``) to end by themselves, then end the rest: each gets a status
        saying the server is shutting down (port-forwards are closed) and its exec process is
        killed. Returns how many sessions had to be ended."""
        self.closing = True
        ctx = self.context
        grace = self.limits.shutdown_grace if grace is None else grace
        if ctx.live:
            log.info("shutting down: %d live sessions get %.0f s to end", ctx.live, grace)
            await wait_event(ctx.drained, grace)
        ended = ctx.live
        if ended:
            log.info("shutting down: ending %d sessions", ended)
            ctx.stopping.set()
            await wait_event(ctx.drained, STOP_WAIT)
            if ctx.live:
                log.warning("shutting down: %d sessions did not end", ctx.live)
        return ended

    async def __aenter__(self) -> StreamServer:
        app = web.Application()
        self.add_routes(app)
        self._runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=logging.getLogger("aiohttp.access") if self.config.access_log else None,
            **runner_kwargs(self.limits),
        )
        await self._runner.setup()
        host, _, port = self.config.listen.rpartition(":")
        site = GuardedSite(
            self._runner,
            host.strip("[]"),
            int(port),
            limits=self.limits,
            metrics=self.metrics,
            ssl_context=self.config.ssl,
        )
        await site.start()
        if not self.config.base_url:
            addr = self._runner.addresses[0]
            shown = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
            scheme = "https" if self.config.ssl else "http"
            self.base_url = f"{scheme}://{shown}:{addr[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self.shutdown()
            await self._runner.cleanup()
            self._runner = None


__all__ = [
    "BROWSER",
    "AttachRequest",
    "CacheFull",
    "Config",
    "ExecRequest",
    "InvalidRequest",
    "Limits",
    "PortForwardRequest",
    "RecordConfig",
    "StreamRequest",
    "StreamServer",
]
