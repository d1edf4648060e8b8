"""Docker's multiplexed attach/exec stream (no TTY): 8-byte frame headers, sans-IO.

Each frame is ``[stream u8][0 0 0][length u32 big-endian]`` followed by ``length`` bytes, where
stream 0 is stdin (echoed by some engines), 1 stdout and 2 stderr (Docker Engine API,
"Attach to a container": *Stream format*). With a TTY the engine sends raw bytes instead.
"""

from __future__ import annotations

import struct

STDIN, STDOUT, STDERR = 0, 1, 2
_HEADER = struct.Struct(">BxxxL")


class DemuxError(ValueError):
    """The engine sent a frame header that is not one (unknown stream number)."""


class Demuxer:
    """Split a multiplexed byte stream into ``(stream, payload)`` pieces.

    Payloads are handed out as soon as bytes arrive (a frame's payload may come in several
    pieces), so a large frame is never held back, and no byte is copied more than once.
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
        pos, end = 0, len(data)
        while pos < end:
            if self._remaining:
                take = min(self._remaining, end - pos)
                piece = data if (pos == 0 and take == end) else data[pos : pos + take]
                out.append((self._stream, piece))
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
        return out


def mux(stream: int, payload: bytes) -> bytes:
    """One frame, as the engine writes it (for tests and fakes)."""
    return _HEADER.pack(stream, len(payload)) + payload
