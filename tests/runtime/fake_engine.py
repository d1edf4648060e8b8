"""A fake Docker engine on a unix socket, for the Docker runtime's tests of its own engine
connections (tests/runtime/test_docker_engine_json.py, tests/runtime/test_first_size.py).

It reads HTTP requests (keeping each), hands each to :meth:`FakeEngine.answer`, and keeps the
connection for the next request unless the request asked to close it, as dockerd does. A
subclass answers; ``answer`` returning False ends the connection (an upgraded stream that is
done, an answer delimited by the close, a connection cut on purpose).
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Request:
    head: bytes  # as sent, up to and with the blank line
    method: str
    path: str  # without the API version prefix (/v1.41) and the query
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case
    body: bytes


class FakeEngine:
    """Answers what a subclass's :meth:`answer` says; ``requests`` has every request."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[None]] = set()  # cancelled by close: answers that wait

    async def start(self, path: Path) -> None:
        self._server = await asyncio.start_unix_server(self._serve, str(path))

    async def close(self) -> None:
        """Stop listening and end every connection (an engine gone)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def answer(self, request: Request, writer: asyncio.StreamWriter) -> bool:
        """Answer ``request``; False once the connection is to end."""
        raise NotImplementedError

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                line, *fields = head.decode().split("\r\n")
                method, target, _ = line.split(" ")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (f.partition(":") for f in fields if f)
                }
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                url = urllib.parse.urlsplit(target)
                request = Request(
                    head=head,
                    method=method,
                    path=re.sub(r"^/v[0-9.]+", "", url.path),
                    query=urllib.parse.parse_qs(url.query),
                    headers=headers,
                    body=body,
                )
                self.requests.append(request)
                if not await self.answer(request, writer):
                    await writer.drain()
                    return
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        finally:
            self._handlers.discard(task)
            writer.close()

    @staticmethod
    def reply(
        writer: asyncio.StreamWriter, status: int, doc: Any = None, *, raw: bytes | None = None
    ) -> bool:
        """An answer with a Content-Length: ``doc`` as JSON, or ``raw`` bytes, or empty."""
        payload = raw if raw is not None else b"" if doc is None else json.dumps(doc).encode()
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        return True
