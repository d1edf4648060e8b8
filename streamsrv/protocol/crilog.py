"""The kubelet's container log file format (CRI logging), sans-IO.

Every line of a container's log file is::

    <timestamp> <stream> <tags> <content>\\n
    2016-10-06T00:17:09.669794202Z stdout F log content 1

``timestamp`` is RFC 3339 with nanoseconds (written here always in UTC with nine digits, as
Docker writes its own), ``stream`` is ``stdout`` or ``stderr``, and the first of the
``:``-separated ``tags`` is ``F`` (the line is complete: its newline was dropped) or ``P`` (a
piece of a longer line: its content goes on in the next ``P``/``F`` line of the same stream).

:class:`CriLogWriter` does what containerd's CRI logger does (``redirectLogs`` in
``internal/cri/io/logger.go``): a line ending in ``\\r\\n`` loses both; a line longer than
``max_line`` (containerd's ``max_container_log_line_size``, 16 KiB) becomes ``P`` pieces of
``max_line`` bytes and a last ``F`` piece; and what is left without a newline when the output
ends is written as ``P`` (containerd: "it should be treated as a partial line"). The kubelet
reads a ``P`` line's content without a newline and an ``F`` line's with one
(``parseCRILog``), so joining the contents that way gives back a stream's output.
"""

from __future__ import annotations

import calendar
import re
import time
from datetime import UTC, datetime
from typing import NamedTuple

from ..errors import ProtocolError

STDOUT = "stdout"
STDERR = "stderr"
STREAMS = (STDOUT, STDERR)
FULL = "F"
PARTIAL = "P"
#: containerd's default ``max_container_log_line_size``: longer lines are cut into pieces.
MAX_LINE = 16 * 1024
#: Characters of a timestamp as :func:`format_timestamp` writes it.
TIMESTAMP_SIZE = len("2016-10-06T00:17:09.669794202Z")
_MAX_TIMESTAMP = 64  # characters a timestamp being parsed may have (offsets, fewer digits)

_TIMESTAMP = re.compile(
    rb"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:\d\d)"
)
_BYTES_STREAMS = {s.encode(): s for s in STREAMS}


class CriLogError(ProtocolError, ValueError):
    """A line or timestamp that is not in the CRI log format."""


def format_timestamp(ns: int) -> str:
    """``ns`` (nanoseconds since the epoch) as RFC 3339 in UTC with nine digits."""
    seconds, frac = divmod(ns, 1_000_000_000)
    return f"{_second(seconds)}.{frac:09d}Z"


_last_second: tuple[int, str] = (-1, "")


def _second(seconds: int) -> str:
    global _last_second
    if _last_second[0] != seconds:  # one strftime per second, not per line
        text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _last_second = (seconds, text)
    return _last_second[1]


def parse_timestamp(text: str | bytes) -> int:
    """An RFC 3339 timestamp (``Z`` or an offset, 0 to 9 fractional digits) in nanoseconds
    since the epoch, exactly (a ``datetime`` would keep only microseconds).

    Raises:
        CriLogError: not such a timestamp.
    """
    raw = text.encode() if isinstance(text, str) else bytes(text)
    m = _TIMESTAMP.fullmatch(raw)
    if m is None:
        raise CriLogError(f"not an RFC 3339 timestamp: {raw[:_MAX_TIMESTAMP]!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    try:
        datetime(year, month, day, hour, minute, second)  # checks the ranges
    except ValueError as exc:
        raise CriLogError(f"not an RFC 3339 timestamp: {raw!r}: {exc}") from None
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    zone = m.group(8)
    if zone not in (b"Z", b"z"):
        offset = int(zone[1:3]) * 3600 + int(zone[4:6]) * 60
        seconds -= offset if zone[:1] == b"+" else -offset
    frac = (m.group(7) or b"").ljust(9, b"0")
    return seconds * 1_000_000_000 + int(frac)


def timestamp_ns(when: datetime | int | None = None) -> int:
    """Nanoseconds since the epoch: of ``when`` (a datetime, microseconds; or nanoseconds
    already), or of now (``time.time_ns()``)."""
    if when is None:
        return time.time_ns()
    if isinstance(when, int):
        return when
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


class LogLine(NamedTuple):
    """One parsed line: unpacks as ``(timestamp, stream, partial, content)``.

    ``content`` is without the line's newline; the output it stands for is ``content`` for a
    partial (``P``) line and ``content + b"\\n"`` for a full one (:attr:`output`).
    """

    timestamp: str
    stream: str
    partial: bool
    content: bytes

    @property
    def ns(self) -> int:
        """The timestamp in nanoseconds since the epoch."""
        return parse_timestamp(self.timestamp)

    @property
    def time(self) -> datetime:
        """The timestamp as an aware datetime (to the microsecond)."""
        seconds, frac = divmod(self.ns, 1_000_000_000)
        return datetime.fromtimestamp(seconds, UTC).replace(microsecond=frac // 1000)

    @property
    def output(self) -> bytes:
        """What the container wrote: the content, plus the newline of a full line."""
        return self.content if self.partial else self.content + b"\n"


def format_line(ns: int, stream: str, partial: bool, content: bytes) -> bytes:
    """One line of a log file (``content`` must hold no newline)."""
    tag = PARTIAL if partial else FULL
    return b"%s %s %s %s\n" % (
        format_timestamp(ns).encode(),
        stream.encode(),
        tag.encode(),
        content,
    )


def parse_line(line: bytes) -> LogLine:
    """One line of a log file (with or without its newline), as the kubelet reads it.

    Raises:
        CriLogError: a line that is not in the format (no timestamp, an unknown stream, no
            tag, a first tag other than ``P`` or ``F``).
    """
    if line.endswith(b"\n"):
        line = line[:-1]
    parts = line.split(b" ", 3)
    if len(parts) < 4:
        raise CriLogError(f"not a CRI log line: {line[:80]!r}")
    ts, stream, tags, content = parts
    if len(ts) > _MAX_TIMESTAMP:
        raise CriLogError(f"not a CRI log line: {line[:80]!r}")
    parse_timestamp(ts)
    name = _BYTES_STREAMS.get(stream)
    if name is None:
        raise CriLogError(f"unexpected stream type {stream[:20]!r}")
    tag = tags.split(b":", 1)[0]
    if tag not in (b"P", b"F"):
        raise CriLogError(f"unexpected log tag {tag[:20]!r}")
    return LogLine(ts.decode(), name, tag == b"P", content)


def parse_lines(data: bytes) -> list[LogLine]:
    """Every line of ``data`` (a log file's content; lines end at ``\\n`` only)."""
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # what follows the last newline: nothing
    return [parse_line(line) for line in lines]


class CriLogWriter:
    """A container's output (both streams) to log file lines; no I/O.

    ``feed`` returns the complete lines the new output makes; what follows the last newline
    of a stream is kept (at most ``max_line`` + 1 bytes per stream: a longer piece is written
    at once as ``P`` lines) until its newline comes or ``flush`` writes it as a ``P`` line.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self.max_line = max_line
        self._pending: dict[str, bytes] = {STDOUT: b"", STDERR: b""}

    def pending(self, stream: str) -> int:
        """Bytes of ``stream`` held for a line not ended yet."""
        return len(self._pending[stream])

    def feed(self, stream: str, data: bytes, now: datetime | int | None = None) -> bytes:
        """The lines that ``data`` (output of ``stream``) completes, stamped ``now``
        (a datetime, nanoseconds since the epoch, or None: the current time)."""
        if stream not in self._pending:
            raise ValueError(f"unknown stream {stream!r}")
        if not data:
            return b""
        ns = timestamp_ns(now)
        out: list[bytes] = []
        pending = self._pending[stream]
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            line = pending + data[start:end] if pending else data[start:end]
            pending = b""
            if line.endswith(b"\r"):
                line = line[:-1]
            self._pieces(out, ns, stream, line, last=True)
            start = end + 1
        if start < len(data):
            pending += data[start:]
            # A trailing \r may be half of a \r\n: it is not content (yet).
            while len(pending) - pending.endswith(b"\r") > self.max_line:
                out.append(format_line(ns, stream, True, pending[: self.max_line]))
                pending = pending[self.max_line :]
        self._pending[stream] = pending
        return b"".join(out)

    def flush(self, stream: str | None = None, now: datetime | int | None = None) -> bytes:
        """Write what is held of ``stream`` (None: of both) as ``P`` lines: the output ended
        (or, for a source that frames its own lines, a piece of a line ended)."""
        ns = timestamp_ns(now)
        out: list[bytes] = []
        for name in (stream,) if stream is not None else STREAMS:
            pending = self._pending[name]
            if pending:
                self._pending[name] = b""
                self._pieces(out, ns, name, pending, last=False)
        return b"".join(out)

    def _pieces(self, out: list[bytes], ns: int, stream: str, line: bytes, *, last: bool) -> None:
        """``line`` as pieces of at most ``max_line`` bytes: ``P``, and ``F`` for the last
        one when the line is complete (``last``)."""
        size = self.max_line
        pos = 0
        while len(line) - pos > size:
            out.append(format_line(ns, stream, True, line[pos : pos + size]))
            pos += size
        out.append(format_line(ns, stream, not last, line[pos:] if pos else line))
