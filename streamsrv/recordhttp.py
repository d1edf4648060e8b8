"""The recordings API: the list of session recordings and each one's cast file (docs/api.md,
"Recordings"). Both need the bearer token (they are under ``/api``).

``GET /api/streamsrv/v1/recordings`` answers ``{"enabled": bool, "items": [...]}``, newest
first; ``GET /api/streamsrv/v1/recordings/{name}`` the asciicast v2 text. A name is only ever
matched against :data:`streamsrv.recording.NAME` and never joined to a path otherwise, so
``..``, slashes and encoded tricks are a 400 before any file is touched.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from .gateway import STREAMS, StatusError
from .recording import Recorder

PREFIX = "/api/streamsrv/v1/recordings"
CAST_TYPE = "application/x-asciicast"
#: Seconds the list may take to read the directory.
LIST_TIMEOUT = 10.0


def _recorder(request: web.Request) -> Recorder | None:
    return request.app[STREAMS].recorder


async def list_recordings(request: web.Request) -> web.Response:
    recorder = _recorder(request)
    if recorder is None:
        return web.json_response({"enabled": False, "items": []})
    try:
        limit = int(request.query.get("limit", "500"))
    except ValueError:
        raise StatusError(400, "limit: expected an integer") from None
    if not 1 <= limit <= 5000:
        raise StatusError(400, "limit: expected 1 to 5000")
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(LIST_TIMEOUT):  # a hung disk: an answer, not a hang
            items = await loop.run_in_executor(recorder.pool, recorder.listing, limit)
    except TimeoutError:
        raise StatusError(
            503, f"the recording directory did not answer within {LIST_TIMEOUT:.0f} s"
        ) from None
    except OSError as exc:
        raise StatusError(503, f"the recording directory cannot be read: {exc}") from exc
    return web.json_response(
        {"enabled": True, "items": items}, headers={"Cache-Control": "no-store"}
    )


async def get_recording(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"].removesuffix(".cast")
    recorder = _recorder(request)
    if recorder is None:
        raise StatusError(404, "session recording is off (streamsrv serve --record DIR)")
    path = recorder.path_of(name)
    if path is None:
        raise StatusError(
            400, f"invalid recording name {name[:80]!r}: expected YYYYMMDDTHHMMSSZ-xxxxxxxx"
        )
    if not path.is_file():
        raise StatusError(
            404,
            f'recordings "{name}" not found',
            details={"name": name, "kind": "recordings"},
        )
    return web.FileResponse(
        path,
        headers={
            "Content-Type": CAST_TYPE,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Content-Disposition": f'inline; filename="{name}.cast"',
        },
    )


def add_recording_routes(app: web.Application) -> None:
    app.router.add_get(PREFIX, list_recordings)
    app.router.add_get(PREFIX + "/{name}", get_recording)


__all__ = ["add_recording_routes"]
