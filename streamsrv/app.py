"""The served application: the gateway, the browser page, the recordings API and the stream
routes on one app.

The only module that knows both the gateway and the web UI (they meet through the gateway's
small interface: ``issue_url``, ``live_pod``, ``pick_container``, ``origin_of``,
``StatusError``; the recordings API uses ``STREAMS`` and ``StatusError``).
"""

from __future__ import annotations

from aiohttp import web

from .gateway import add_routes, auth_and_errors
from .podmanager import PodManager
from .recordhttp import add_recording_routes
from .server import StreamServer
from .webui import add_ui_routes


def make_app(manager: PodManager, token: str, streams: StreamServer) -> web.Application:
    app = web.Application(
        middlewares=[auth_and_errors], client_max_size=streams.limits.max_request_body
    )
    add_routes(app, manager, token, streams)
    add_ui_routes(app)
    add_recording_routes(app)
    return app


__all__ = ["make_app"]
