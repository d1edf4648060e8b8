"""Terminal size events: a stream of concatenated JSON objects (protocol.md §2.4).

kubectl writes each size with Go's ``json.Encoder`` (``{"Width":80,"Height":24}`` and a
newline) on the ``resize`` stream (SPDY) or channel 4 (WebSocket). Objects may be split across
messages, or several may share one, so the server decodes incrementally, like the kubelet lib's
``handleResizeEvents`` (``json.NewDecoder(stream)`` + ``Decode(&remotecommand.TerminalSize{})``
in a loop) followed by ``kubecontainer.HandleResizing``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

#: Bytes a decoder holds without finding the end of a JSON value before it gives up.
MAX_PENDING = 64 * 1024
#: Nesting a size object may carry in unknown fields (Go ignores them, but must parse them).
MAX_DEPTH = 32

_WHITESPACE = b" \t\r\n"  # JSON's four whitespace bytes
_OPEN = frozenset(b"{[")
_CLOSE = frozenset(b"}]")
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_NULL = b"null"


@dataclass(frozen=True, slots=True)
class TerminalSize:
    """A terminal size in character cells (Go ``remotecommand.TerminalSize``, two ``uint16``)."""

    width: int
    height: int


class ResizeStreamError(ValueError):
    """The resize stream is not a sequence of size objects.

    Attributes:
        sizes: the sizes the failing :meth:`ResizeDecoder.feed` call decoded before the error
            (Go delivers those before its decoder stops).
    """

    def __init__(self, message: str, sizes: list[TerminalSize]) -> None:
        super().__init__(message)
        self.sizes = sizes


def encode(size: TerminalSize) -> bytes:
    """``size`` as kubectl sends it: ``{"Width":80,"Height":24}`` plus a newline.

    client-go ``tools/remotecommand`` encodes ``TerminalSize`` with ``json.NewEncoder``, which
    appends ``\\n`` to every value.
    """
    return b'{"Width":%d,"Height":%d}\n' % (size.width, size.height)


class ResizeDecoder:
    """Feed the bytes of a resize stream, get back every size they complete.

    Follows Go's decoding of ``TerminalSize``: field names match case-insensitively, unknown
    fields are ignored, a missing or ``null`` field stays 0, and a top-level ``null`` is no
    event; a field that is not an integer 0-65535, a value that is not an object, or malformed
    JSON is an error, after which Go stops reading sizes for the session -- so does this
    decoder (it swallows everything fed after the error). Sizes with a zero width or height are
    dropped, as ``kubecontainer.HandleResizing`` drops them before they reach the runtime.

    Args:
        max_pending: bytes of one unfinished value to hold before failing (default 64 KiB).
    """

    __slots__ = ("_buf", "_scan", "_depth", "_in_string", "_escape", "_failed", "_max_pending")

    def __init__(self, *, max_pending: int = MAX_PENDING) -> None:
        self._buf = bytearray()
        self._max_pending = max_pending
        self._failed = False
        # Where the scan of the current, unfinished object stopped; 0 = no object started.
        self._scan = 0
        self._depth = 0
        self._in_string = False
        self._escape = False

    @property
    def failed(self) -> bool:
        """An error ended the stream; later input is ignored."""
        return self._failed

    def feed(self, data: bytes) -> list[TerminalSize]:
        """Decode what ``data`` completes.

        Args:
            data: the next bytes of the stream (a WebSocket message's payload or SPDY DATA).

        Returns:
            The sizes completed by ``data``, oldest first; ``[]`` once the decoder failed.

        Raises:
            ResizeStreamError: the stream broke the format, or one value grew past
                ``max_pending`` bytes; ``.sizes`` has what came before in this call.
        """
        if self._failed:
            return []
        self._buf += data
        sizes: list[TerminalSize] = []
        try:
            while (value := self._next_value()) is not None:
                size = _size(value)
                if size is not None:
                    sizes.append(size)
        except ValueError as exc:
            self._failed = True
            self._buf.clear()
            raise ResizeStreamError(f"resize stream: {exc}", sizes) from None
        return sizes

    def _next_value(self) -> bytes | None:
        """Cut the next complete JSON value off the buffer; ``None`` when it needs more."""
        buf = self._buf
        if self._scan == 0:
            start = 0
            while start < len(buf) and buf[start] in _WHITESPACE:
                start += 1
            del buf[:start]
            if not buf:
                return None
            if buf[0] != ord("{"):
                # Only an object or null decodes into TerminalSize.
                if buf[: len(_NULL)] == _NULL:
                    del buf[: len(_NULL)]
                    return _NULL
                if _NULL.startswith(buf):
                    return None
                raise ValueError(f"expected an object, got {bytes(buf[:16])!r}")
        i = self._scan
        depth, in_string, escape = self._depth, self._in_string, self._escape
        end = len(buf)
        while i < end:
            byte = buf[i]
            i += 1
            if in_string:
                if escape:
                    escape = False
                elif byte == _BACKSLASH:
                    escape = True
                elif byte == _QUOTE:
                    in_string = False
            elif byte == _QUOTE:
                in_string = True
            elif byte in _OPEN:
                depth += 1
                if depth > MAX_DEPTH:
                    raise ValueError(f"nested deeper than {MAX_DEPTH}")
            elif byte in _CLOSE:
                depth -= 1
                if depth == 0:
                    value = bytes(buf[:i])
                    del buf[:i]
                    self._scan, self._depth, self._in_string, self._escape = 0, 0, False, False
                    return value
        if len(buf) > self._max_pending:
            raise ValueError(f"no complete JSON value in {len(buf)} bytes")
        self._scan, self._depth, self._in_string, self._escape = i, depth, in_string, escape
        return None


def _size(raw: bytes) -> TerminalSize | None:
    """Decode one complete JSON value like Go's ``json.Unmarshal`` into ``TerminalSize``."""
    # Key/value pairs in wire order, so that a repeated key behaves as in Go (last non-null
    # value wins). JSONDecodeError is a ValueError.
    pairs = json.loads(raw.decode("utf-8", "replace"), object_pairs_hook=list)
    if pairs is None:
        return None
    # The scanner only hands over values that start with '{' and end at the matching close,
    # so a value that parsed is an object.
    assert isinstance(pairs, list)
    width = height = 0
    for key, value in pairs:
        name = key.lower()
        if name == "width":
            width = _uint16(key, value, width)
        elif name == "height":
            height = _uint16(key, value, height)
    if width == 0 or height == 0:
        return None
    return TerminalSize(width, height)


def _uint16(key: str, value: object, current: int) -> int:
    if value is None:
        return current  # Go: null leaves the field as it was
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise ValueError(f"{key}: {value!r} is not a uint16")
    return value
