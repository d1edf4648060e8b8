"""Terminal size events: a stream of concatenated JSON objects (docs/protocol.md §2.4).

kubectl writes each size with Go's ``json.Encoder`` (``{"Width":80,"Height":24}`` and a
newline) on the ``resize`` stream (SPDY) or channel 4 (WebSocket). Objects may be split across
messages, or several may share one, so the server decodes incrementally, like the kubelet lib's
``handleResizeEvents`` (``json.NewDecoder(stream)`` + ``Decode(&remotecommand.TerminalSize{})``
in a loop) followed by ``kubecontainer.HandleResizing``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..errors import ProtocolError as _BaseProtocolError

#: Bytes a decoder holds without finding the end of a JSON value before it gives up.
MAX_PENDING = 64 * 1024
#: Nesting a size object may carry in unknown fields (Go ignores them, but must parse them).
MAX_DEPTH = 32

_OPEN = frozenset(b"{[")
_CLOSE = frozenset(b"}]")
_SPECIAL = frozenset(b'"\\{}[]')  # the bytes the scan of an object looks at
_QUOTE, _BACKSLASH, _LBRACE = ord('"'), ord("\\"), ord("{")
_NULL = b"null"

# The patterns below are shortcuts: input they do not match takes the general path, so every
# result is that of a byte-by-byte bracket scan followed by json.loads of each value.
_WS = re.compile(rb"[ \t\r\n]*+")  # JSON's four whitespace bytes
# 0..65535 in JSON's form (no leading zero).
_U16 = (
    rb"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}"
    rb"|[1-9][0-9]{0,3}|0)"
)
# A run of what kubectl sends, and of values that decode to no size (null, an empty object).
# The numbers in such a run are its widths and heights, in pairs.
_KUBECTL_RUN = re.compile(
    rb'(?:[ \t\r\n]*+(?:\{"Width":' + _U16 + rb',"Height":' + _U16 + rb"\}"
    rb"|null|\{[ \t\r\n]*+\})){1,4096}+"
)
_DIGITS_ONLY = bytes(b if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
# Inside a string: anything but a quote, or a backslash and the byte it escapes (so a lone
# backslash at the end of the input stops it). Outside one: anything but a quote or a bracket.
_STRING_BODY = rb'(?:[^"\\]++|\\[\x00-\xff])*+'
_STRING = re.compile(_STRING_BODY)
_PLAIN = re.compile(rb'[^"{}\[\]]*+')


def _object_pattern() -> bytes:
    """A complete value from ``{`` to the bracket that closes it, nested at most MAX_DEPTH:
    where the byte scan ends it. Possessive throughout, so a failure costs linear time."""
    text = rb'"' + _STRING_BODY + rb'"'
    inner = rb'(?:[^"{}\[\]]++|' + text + rb")*+"  # the content at MAX_DEPTH
    for _ in range(MAX_DEPTH - 1):
        inner = rb'(?:[^"{}\[\]]++|' + text + rb"|[{\[]" + inner + rb"[}\]])*+"
    return rb"\{" + inner + rb"[}\]]"


_OBJECT = _object_pattern()
# A complete value (object or null; group 1 is b"" for a null), and a run of them.
_OBJECT_RUN = re.compile(rb"(?:[ \t\r\n]*+(?:" + _OBJECT + rb"|null)){1,1024}+")
_OBJECT_ITEM = re.compile(rb"[ \t\r\n]*+(?:(" + _OBJECT + rb")|null)")
_SMALL = 256  # a value (with the whitespace before it) below this is decoded in a run
# json.loads(text, object_pairs_hook=list) builds this decoder on every call.
_DECODER = json.JSONDecoder(object_pairs_hook=list)


@dataclass(frozen=True, slots=True)
class TerminalSize:
    """A terminal size in character cells (Go ``remotecommand.TerminalSize``, two ``uint16``)."""

    width: int
    height: int


class ResizeStreamError(_BaseProtocolError, ValueError):
    """The resize stream is not a sequence of size objects.

    A :class:`streamsrv.errors.ProtocolError`, and still a ``ValueError``.

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

    Runs of what kubectl sends are decoded by compiled patterns, and runs of other values that
    are complete in the buffer are delimited by one and parsed by one ``json`` call; only a
    value still incomplete at the end of a :meth:`feed` is scanned in Python, byte by byte at
    quotes and brackets, a run of other bytes at a time. The results are those of scanning
    every byte and parsing every value on its own.

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
        buf = self._buf
        buf += data
        sizes: list[TerminalSize] = []
        try:
            self._decode(buf, sizes)
        except ValueError as exc:
            self._failed = True
            buf.clear()
            raise ResizeStreamError(f"resize stream: {exc}", sizes) from None
        return sizes

    def _decode(self, buf: bytearray, sizes: list[TerminalSize]) -> None:
        """Append the sizes of every value complete in ``buf`` and drop what was used."""
        pos = 0
        if self._scan:  # an object left unfinished by an earlier call
            end = self._scan_on(buf)
            if end < 0:
                return
            _append(sizes, bytes(buf[:end]))
            pos = end
        kubectl, item, ws = _KUBECTL_RUN.match, _OBJECT_ITEM.match, _WS.match
        while True:
            run = kubectl(buf, pos)
            if run is not None:
                end = run.end()
                _extend_kubectl(sizes, bytes(buf[pos:end]))
                pos = end
                continue
            value = item(buf, pos)
            if value is not None:
                end = value.end()
                if end - pos < _SMALL:  # and maybe more like it: decode a run of them at once
                    run = _OBJECT_RUN.match(buf, pos)
                    assert run is not None  # it starts with this value
                    end = run.end()
                    _extend_objects(sizes, _OBJECT_ITEM.findall(buf, pos, end))
                else:  # one pattern pass over a large value, not two
                    _extend_objects(sizes, [value.group(1) or b""])
                pos = end
                continue
            skipped = ws(buf, pos)
            assert skipped is not None  # matches the empty string at least
            pos = skipped.end()
            if pos == len(buf):
                buf.clear()
                return
            if buf[pos] != _LBRACE:
                # Only an object or null decodes into TerminalSize (a whole null was a run).
                if len(buf) - pos < len(_NULL) and _NULL.startswith(buf[pos:]):
                    del buf[:pos]
                    return
                raise ValueError(f"expected an object, got {bytes(buf[pos : pos + 16])!r}")
            # An object that is incomplete (or nested too deep): scan it, keep it for later.
            del buf[:pos]
            pos = 0
            self._depth, self._in_string, self._escape = 0, False, False
            end = self._scan_on(buf)
            if end < 0:
                return
            _append(sizes, bytes(buf[:end]))  # not reached while _OBJECT_RUN matches it
            pos = end

    def _scan_on(self, buf: bytearray) -> int:
        """Go on scanning the object at the start of ``buf`` from ``self._scan``.

        Returns the end of the object, or -1 with the scan state saved when ``buf`` ends first.

        Raises:
            ValueError: nested deeper than MAX_DEPTH, or more than ``max_pending`` bytes held.
        """
        i = self._scan
        depth, in_string, escape = self._depth, self._in_string, self._escape
        end = len(buf)
        plain, string = _PLAIN.match, _STRING.match
        # Byte by byte where it matters, one pattern call over each run of ordinary bytes.
        while i < end:
            byte = buf[i]
            if in_string:
                if escape:
                    escape = False
                    i += 1
                elif byte == _BACKSLASH:
                    escape = True
                    i += 1
                elif byte == _QUOTE:
                    in_string = False
                    i += 1
                else:
                    i += 1
                    if i < end and buf[i] not in _SPECIAL:
                        step = string(buf, i)
                        assert step is not None  # matches the empty string at least
                        i = step.end()
                continue
            i += 1
            if byte == _QUOTE:
                in_string = True
            elif byte in _OPEN:
                depth += 1
                if depth > MAX_DEPTH:
                    raise ValueError(f"nested deeper than {MAX_DEPTH}")
            elif byte in _CLOSE:
                depth -= 1
                if depth == 0:
                    self._scan, self._depth, self._in_string, self._escape = 0, 0, False, False
                    return i
            elif i < end and buf[i] not in _SPECIAL:
                step = plain(buf, i)
                assert step is not None
                i = step.end()
        if len(buf) > self._max_pending:
            raise ValueError(f"no complete JSON value in {len(buf)} bytes")
        self._scan, self._depth, self._in_string, self._escape = i, depth, in_string, escape
        return -1


def _append(sizes: list[TerminalSize], raw: bytes) -> None:
    size = _size(raw)
    if size is not None:
        sizes.append(size)


def _extend_kubectl(sizes: list[TerminalSize], run: bytes) -> None:
    """Append the sizes of a ``_KUBECTL_RUN``: its numbers in (width, height) pairs; nulls
    and empty objects have none. Equal sizes share one (immutable) instance."""
    numbers = iter(run.translate(_DIGITS_ONLY).split())
    pairs = list(zip(numbers, numbers, strict=False))
    made: dict[tuple[bytes, bytes], TerminalSize] = {}
    dropped = False
    for pair in set(pairs):
        width, height = pair
        if width == b"0" or height == b"0":
            dropped = True  # dropped, as by HandleResizing
        else:
            made[pair] = TerminalSize(int(width), int(height))
    if dropped:
        sizes += [made[pair] for pair in pairs if pair in made]
    else:
        sizes += map(made.__getitem__, pairs)


def _extend_objects(sizes: list[TerminalSize], items: list[bytes]) -> None:
    """Append the sizes of complete values (b"" for a null) decoded as one JSON array.

    If the array does not decode, some value does not either: each is then decoded alone, in
    order, so the error and the sizes before it are those of one-by-one decoding.
    """
    raws = [raw for raw in items if raw]
    try:
        values = _DECODER.decode((b"[" + b",".join(raws) + b"]").decode("utf-8", "replace"))
    except ValueError:
        for raw in raws:
            _append(sizes, raw)
        return
    made: dict[tuple[int, int], TerminalSize] = {}
    for pairs in values:
        dims = _dims(pairs)
        if dims is not None:
            size = made.get(dims)
            if size is None:
                size = made[dims] = TerminalSize(*dims)
            sizes.append(size)


def _size(raw: bytes) -> TerminalSize | None:
    """Decode one complete JSON value like Go's ``json.Unmarshal`` into ``TerminalSize``."""
    # JSONDecodeError is a ValueError.
    dims = _dims(_DECODER.decode(raw.decode("utf-8", "replace")))
    return None if dims is None else TerminalSize(*dims)


def _dims(pairs: list[tuple[str, object]] | None) -> tuple[int, int] | None:
    """Width and height from an object's key/value pairs (``None`` for null or a zero)."""
    # Pairs in wire order, so that a repeated key behaves as in Go (last non-null value wins).
    if pairs is None:
        return None
    # Only values that start with '{' and end at the matching close get here, so a value
    # that parsed is an object.
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
    return width, height


def _uint16(key: str, value: object, current: int) -> int:
    if value is None:
        return current  # Go: null leaves the field as it was
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise ValueError(f"{key}: {value!r} is not a uint16")
    return value
