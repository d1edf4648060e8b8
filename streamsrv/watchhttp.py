"""A watch over HTTP, as the apiserver streams one: ``{"type": ..., "object": ...}`` lines.

The request is answered 200 at once; then come the changes after the asked-for resource version
(or, with none or "0", the current objects as ADDED first), each line flushed, until the
watch's ``timeoutSeconds`` pass, the client leaves, or it falls too far behind. A version older
than the hub keeps is an ERROR event carrying a ``410 Expired`` Status, which a client-go
reflector answers by listing again. docs/api.md describes the rules.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .protocol.status import kube_status
from .watch import ADDED, BOOKMARK, ERROR, Change, Expired, Hub, TooManyWatchers, changes

#: The apiserver picks a watch's length at random between its minimum request timeout (1800 s)
#: and twice that, so that watches do not all end together; ``timeoutSeconds`` caps it.
MIN_TIMEOUT = 1800.0
BOOKMARK_EVERY = 60.0


class BadWatch(ValueError):
    pass


def watch_params(query: Any) -> tuple[int | None, float, bool]:
    """``(resourceVersion or None, seconds, bookmarks)`` from a watch request's query."""
    raw = query.get("resourceVersion", "")
    rv: int | None = None
    if raw not in ("", "0"):
        try:
            rv = int(raw)
        except ValueError:
            raise BadWatch(f"resourceVersion: Invalid value: {raw!r}: must be an integer") from None
        if rv < 0:
            raise BadWatch(f"resourceVersion: Invalid value: {raw!r}: must be non-negative")
    seconds = MIN_TIMEOUT * (1 + random.random())  # noqa: S311 (spreading, not secrecy)
    if "timeoutSeconds" in query:
        try:
            seconds = min(float(query["timeoutSeconds"]), seconds)
        except ValueError:
            raise BadWatch("timeoutSeconds must be a number") from None
    bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
    return rv, max(seconds, 0.0), bookmarks


async def serve_watch(
    request: web.Request,
    hub: Hub,
    kind: str,
    match: Callable[[Change], bool],
    current: list[dict[str, Any]],
    render: Callable[[dict[str, Any]], dict[str, Any]] = lambda obj: obj,
) -> web.StreamResponse:
    """Stream ``kind`` changes matching ``match``. ``current`` holds the matching objects as
    they are now (sent as ADDED when no version is asked for); ``render`` turns an object into
    what is sent (a Table row, say)."""
    rv, seconds, bookmarks = watch_params(request.query)  # BadWatch: the caller's 400
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    with hub.watcher(kind, match) as w:  # before reading the backlog: nothing falls between
        start = hub.rv
        try:
            backlog = (
                [Change(start, ADDED, kind, "", "", obj) for obj in current]
                if rv is None
                else hub.since(rv, kind, match)
            )
        except Expired as exc:
            await resp.prepare(request)
            status = kube_status(410, "Expired", str(exc))
            await _send(resp, ERROR, status)
            await resp.write_eof()
            return resp
        await resp.prepare(request)
        sent = rv or start
        for change in backlog:
            await _send(resp, change.type, render(change.obj))
            sent = max(sent, change.rv)
        sent = max(sent, start)
        async for next_change in changes(w, seconds, BOOKMARK_EVERY if bookmarks else None):
            if next_change is None:
                mark = {
                    "kind": kind,
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": str(hub.rv)},
                }
                await _send(resp, BOOKMARK, mark)
                continue
            if next_change.rv <= sent:
                continue
            sent = next_change.rv
            await _send(resp, next_change.type, render(next_change.obj))
    await resp.write_eof()
    return resp


async def _send(resp: web.StreamResponse, type_: str, obj: dict[str, Any]) -> None:
    await resp.write(
        json.dumps({"type": type_, "object": obj}, separators=(",", ":")).encode() + b"\n"
    )


__all__ = ["BadWatch", "TooManyWatchers", "serve_watch", "watch_params"]
