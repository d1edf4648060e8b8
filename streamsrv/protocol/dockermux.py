"""Docker's multiplexed attach/exec stream (no TTY): 8-byte frame headers, sans-IO.

Each frame is ``[stream u8][0 0 0][length u32 big-endian]`` followed by ``length`` bytes, where
stream 0 is stdin (echoed by some engines), 1 stdout and 2 stderr (Docker Engine API,
"Attach to a container": *Stream format*). With a TTY the engine sends raw bytes instead.
"""

from __future__ import annotations

import struct

from ..errors import ProtocolError

STDIN, STDOUT, STDERR = 0, 1, 2
_HEADER = struct.Struct(">BxxxL")


class DemuxError(ProtocolError, ValueError):
    """The engine sent a frame header that is not one (unknown stream number)."""


class Demuxer:
    """Split a multiplexed byte stream into ``(stream, payload)`` pieces.

    Payloads are handed out as soon as bytes arrive (a frame's payload may come in several
    pieces), so a large frame is never held back. Consecutive frames of one stream within one
    ``feed`` come out as one piece: the engine frames each of its reads from the process (about
    32 KiB, often less), and every piece costs the transport a message, a TLS record and a
    ``send``; joining them is one copy. A piece that is all of ``data`` is ``data`` itself.
    """

    __slots__ = ("_buf", "_stream", "_remaining")

    def __init__(self) -> None:
        self._buf = b""
        self._stream = 0
        self._remaining = 0  # payload bytes of the current frame still to come

    @property
    def idle(self) -> bool:
        """True between frames: a stream that ends here ended cleanly."""
        return self._remaining == 0 and not self._buf

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        if self._buf:
            data = self._buf + data
            self._buf = b""
        view = memoryview(data)
        run: list[memoryview] = []  # payload slices of one stream, not yet handed out
        run_stream = -1
        pos, end = 0, len(data)
        while pos < end:
            if self._remaining:
                take = min(self._remaining, end - pos)
                if run and run_stream != self._stream:
                    out.append((run_stream, _join(run, data)))
                    run = []
                run_stream = self._stream
                run.append(view[pos : pos + take])
                self._remaining -= take
                pos += take
                continue
            if end - pos < _HEADER.size:
                self._buf = data[pos:]
                break
            stream, length = _HEADER.unpack_from(data, pos)
            if stream > STDERR:
                raise DemuxError(f"unknown stream {stream} in a multiplexed Docker stream")
            pos += _HEADER.size
            self._stream, self._remaining = stream, length
        if run:
            out.append((run_stream, _join(run, data)))
        return out


def _join(parts: list[memoryview], data: bytes) -> bytes:
    if len(parts) == 1 and len(parts[0]) == len(data):
        return data
    return b"".join(parts)


def mux(stream: int, payload: bytes) -> bytes:
    """One frame, as the engine writes it (for tests and fakes)."""
    return _HEADER.pack(stream, len(payload)) + payload
