"""``kubectl logs``: a container's CRI log file read as the kubelet reads it (docs/protocol.md §9).

:class:`LogOptions` is the apiserver's ``PodLogOptions`` taken from a request's query, checked
the way the apiserver checks it; :func:`read_log` writes what the kubelet's CRI log reader
(``ReadLogs``) would write for those options, from a file in the format of
:mod:`streamsrv.protocol.crilog`. No HTTP here: the caller turns the bytes into a response.

The rules (where they differ from the kubelet's, the kubelet's is said too):

- **Lines.** A ``P`` piece is joined with the pieces after it up to an ``F`` piece, which ends
  the line: the output is the contents, and a newline for the ``F``. A run of pieces is one
  stream's: if a piece of the other stream comes before the ``F`` (the runtime wrote both
  streams at once), what was joined so far is written as it is, without a newline, and the
  rest of that line goes on as a line of its own. The kubelet joins nothing: it writes each
  piece as it reads it, so its bytes are the same but for the timestamps below.
- **Timestamps** (``timestamps``): each line starts with its first piece's timestamp, in the
  kubelet's fixed form (``RFC3339NanoFixed``: nine fractional digits, ``Z`` for UTC, else the
  file's offset) and a space. The kubelet stamps every piece, so a line it shows starts with
  the same stamp; its later pieces' stamps in mid-line are left out here.
- **since** (``sinceTime``/``sinceSeconds``): a line whose first piece is older than the bound
  is left out; one exactly at it is kept (the kubelet: ``timestamp.Before(since)``, per piece).
  ``sinceSeconds`` counts back from the start of the read; ``sinceTime`` is taken to the
  second, as the apiserver hands it to the kubelet (``Format(time.RFC3339)``).
- **tail** (``tailLines=N``): the last N lines as joined above, found by reading the file
  backwards a block at a time, never the whole of it (the kubelet's
  ``tail.FindTailLineStartIndex`` does the same but counts file lines, pieces included).
  ``since`` then applies to those N, as in the kubelet. ``tailLines=0`` writes nothing, or with
  follow only what is written after the read starts.
- **limitBytes**: the output stops once that many bytes are written, cutting a line if need be.
- **follow**: at the end of the file the reader polls for more (no inotify). Only when at the
  end, and at most every ``poll`` seconds, it asks ``running()``; once that says False it reads
  to the end once more and stops. Rotation or truncation of the file is not followed. Without
  follow the file is read up to the size it had when opened (and on to the end of the file
  line being read there), then the reader stops.
- **Malformed lines** (no timestamp, an unknown stream, a tag other than ``P``/``F``, an empty
  line, a head ``<timestamp> <stream> <tags> `` longer than :data:`HEADER_MAX`) are skipped
  and logged at debug level, as the kubelet skips them; they do not end a line being joined.
- **The end.** The last file line, if it has no newline, is read as a ``P`` piece (the kubelet
  too writes it without a newline), and a line still being joined is written as it is.

Bounds, per read, whatever the file's size or the length of its lines: one block of the file
(``block_size``, 64 KiB) with the start of the file line it ends in (up to ``block_size``, or
:data:`LINE_CAP` if smaller: a file line longer than that is passed on as it is read rather
than held whole), one line being joined of at most :data:`LINE_CAP` (1 MiB) plus one piece
(past the cap, what is joined so far is written and the line goes on; its stamp is written
once, with its first part), and one block's output while it is written. That is at most about
``2 × LINE_CAP + 6 × block_size`` bytes (2.4 MiB at the defaults); the tail search holds one
block. The file is read with ``os.pread`` in a worker thread (``asyncio.to_thread``), a block
at a time, and each block is parsed on the event loop between reads: a 64 KiB block of short
lines takes a few milliseconds (measured reading a 64 MiB file of 100-byte lines on a busy
two-CPU machine: the loop's longest wait 18-28 ms, 99% of waits under 21 ms, 10-17 MiB/s).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import RequestError
from .protocol.crilog import CriLogError, format_timestamp, parse_line, parse_timestamp

log = logging.getLogger(__name__)

#: Bytes read from the file at a time.
BLOCK_SIZE = 64 * 1024
#: A joined line is written in parts of about this size when it grows longer.
LINE_CAP = 1024 * 1024
#: The head of a line (``<timestamp> <stream> <tags> ``) must end within this many bytes.
HEADER_MAX = 256

_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_INT64 = (-(2**63), 2**63 - 1)
_TIMESTAMP = re.compile(
    r"(\d{4}-\d\d-\d\d)[Tt](\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:\d\d)", re.ASCII
)
_GO_RFC3339 = "2006-01-02T15:04:05Z07:00"
_YEAR_10000 = 253402300800 * 1_000_000_000  # ns: later stamps have a fifth year digit
_NOT_NEGATIVE = "must be greater than or equal to 0"
_POSITIVE = "must be greater than 0"
_ONE_SINCE = "at most one of `sinceTime` or `sinceSeconds` may be specified"


class InvalidLogOptions(RequestError, ValueError):
    """A ``pods/log`` query the apiserver refuses, worded as it words it.

    Two kinds, as in the apiserver: a value that is not of its type (``tailLines=x``,
    ``sinceTime=yesterday``) is a 400 BadRequest with Go's parse error as the message
    (``strconv.ParseInt: parsing "x": invalid syntax``); a value of the right type that
    ``ValidatePodLogOptions`` refuses is a 422 Invalid, ``PodLogOptions "<pod>" is invalid:
    <errors>``, with a cause per field error (:meth:`details` gives the Status details).

    Attributes:
        code: 400 or 422.
        reason: ``"BadRequest"`` or ``"Invalid"``.
        name: the pod's name (as given to :meth:`LogOptions.from_query`).
        causes: for a 422, ``(type, field, message)`` per field error, e.g.
            ``("FieldValueInvalid", "sinceSeconds", "Invalid value: 0: must be greater than 0")``.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int = 400,
        name: str = "",
        causes: tuple[tuple[str, str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = "Invalid" if code == 422 else "BadRequest"
        self.name = name
        self.causes = causes

    def details(self) -> dict[str, Any] | None:
        """The ``details`` of the apiserver's Status for a 422 (None for a 400)."""
        if self.code != 422:
            return None
        causes = []
        for kind, field, message in self.causes:
            cause = {"reason": kind, "message": message}
            if field:
                cause["field"] = field  # omitempty
            causes.append(cause)
        return {"name": self.name, "kind": "PodLogOptions", "causes": causes}


@dataclass(frozen=True, slots=True)
class LogOptions:
    """The ``PodLogOptions`` of one ``pods/log`` request (``None``: not given).

    ``since_time`` is in nanoseconds since the epoch, a whole second. Build one with
    :meth:`from_query`; the constructor checks nothing.
    """

    container: str | None = None
    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    tail_lines: int | None = None
    since_seconds: int | None = None
    since_time: int | None = None
    limit_bytes: int | None = None

    def since_ns(self, now_ns: int | None = None) -> int | None:
        """The oldest timestamp (ns) a line may have, or None for no bound: the later of
        ``now - sinceSeconds`` and ``sinceTime``, as the kubelet's ``NewLogOptions``."""
        bounds = []
        if self.since_seconds is not None:
            now = time.time_ns() if now_ns is None else now_ns
            bounds.append(now - self.since_seconds * 1_000_000_000)
        if self.since_time is not None:
            bounds.append(self.since_time)
        return max(bounds) if bounds else None

    @classmethod
    def from_query(cls, query: Mapping[str, str], *, name: str = "") -> LogOptions:
        """The options of a ``pods/log`` query, decoded and checked as the apiserver does.

        Booleans: absent, ``0`` or ``false`` (any case) are false, anything else (``""``
        too) is true. Integers as Go's ``strconv.ParseInt(s, 10, 64)``. ``sinceTime`` is
        RFC 3339 (``""`` or ``null``: given, but no bound). Parameters not listed are ignored.
        ``name`` is the pod's, for the message.

        Raises:
            InvalidLogOptions: a value not of its type (400), or refused (422).
        """
        # Decoded in the field order of PodLogOptions; the first bad value is the answer.
        container = query.get("container") or None
        follow = _bool(query.get("follow"))
        previous = _bool(query.get("previous"))
        since_seconds = _int64(query.get("sinceSeconds"))
        since_given = "sinceTime" in query
        since_time = _time(query.get("sinceTime"))
        timestamps = _bool(query.get("timestamps"))
        tail_lines = _int64(query.get("tailLines"))
        limit_bytes = _int64(query.get("limitBytes"))

        errors: list[tuple[str, str, str]] = []
        if tail_lines is not None and tail_lines < 0:
            errors.append(_invalid("tailLines", tail_lines, _NOT_NEGATIVE))
        if limit_bytes is not None and limit_bytes < 1:
            errors.append(_invalid("limitBytes", limit_bytes, _POSITIVE))
        if since_seconds is not None and since_given:
            errors.append(("FieldValueForbidden", "", f"Forbidden: {_ONE_SINCE}"))
        elif since_seconds is not None and since_seconds < 1:
            errors.append(_invalid("sinceSeconds", since_seconds, _POSITIVE))
        if errors:
            # field.Error.Error() is "<field>: <body>"; ErrorList.ToAggregate() shows one error
            # as itself and more as "[a, b]".
            listed = [f"{field}: {body}" for _, field, body in errors]
            text = listed[0] if len(listed) == 1 else "[" + ", ".join(listed) + "]"
            raise InvalidLogOptions(
                f"PodLogOptions {_go_quote(name)} is invalid: {text}",
                code=422,
                name=name,
                causes=tuple(errors),
            )
        return cls(
            container=container,
            follow=follow,
            previous=previous,
            timestamps=timestamps,
            tail_lines=tail_lines,
            since_seconds=since_seconds,
            since_time=since_time,
            limit_bytes=limit_bytes,
        )


def _invalid(field: str, value: int, detail: str) -> tuple[str, str, str]:
    return ("FieldValueInvalid", field, f"Invalid value: {value}: {detail}")


def _go_quote(text: str) -> str:
    """``text`` as Go's ``%q`` shows it (near enough: JSON's escapes for control characters)."""
    return json.dumps(text, ensure_ascii=False)


def _bool(value: str | None) -> bool:
    """apimachinery's ``Convert_Slice_string_To_bool``."""
    if value is None:
        return False
    return not (value == "0" or value.lower() == "false")


def _int64(value: str | None) -> int | None:
    """apimachinery's ``Convert_Slice_string_To_Pointer_int64`` (``strconv.ParseInt``)."""
    if value is None:
        return None
    if _INT.fullmatch(value) is None:
        raise InvalidLogOptions(f"strconv.ParseInt: parsing {_go_quote(value)}: invalid syntax")
    # (int() of thousands of digits is slow, or refused: more than 19 cannot fit anyway.)
    digits = value.lstrip("+-").lstrip("0")
    number = int(value) if len(digits) <= 19 else _INT64[1] + 1
    if not _INT64[0] <= number <= _INT64[1]:
        raise InvalidLogOptions(f"strconv.ParseInt: parsing {_go_quote(value)}: value out of range")
    return number


def _time(value: str | None) -> int | None:
    """``metav1.Time.UnmarshalQueryParameter`` (RFC 3339), to the whole second."""
    if value is None or value in ("", "null"):
        return None
    try:
        ns = parse_timestamp(value)
    except CriLogError:
        quoted = _go_quote(value)
        raise InvalidLogOptions(
            f'parsing time {quoted} as "{_GO_RFC3339}": cannot parse {quoted} as RFC 3339'
        ) from None
    return ns - ns % 1_000_000_000


def _is_fixed(ts: str) -> bool:
    """Whether ``ts`` (a timestamp parse_line accepted, so digits where digits go) is in the
    fixed form: UTC, nine fractional digits. What our runtimes write."""
    return len(ts) == 30 and ts[10] == "T" and ts[19] == "." and ts[29] == "Z"


def _fixed_timestamp(ts: str) -> str:
    """A file's timestamp as the kubelet writes it (``RFC3339NanoFixed``): nine fractional
    digits, ``Z`` for UTC, else the file's offset."""
    if _is_fixed(ts):
        return ts
    m = _TIMESTAMP.fullmatch(ts)
    if m is None:  # parse_line accepted it, so this does not happen
        return ts
    zone = m[4].upper()
    if zone in ("+00:00", "-00:00"):
        zone = "Z"
    return f"{m[1]}T{m[2]}.{(m[3] or '').ljust(9, '0')}{zone}"


def _head(prefix: bytes) -> tuple[str, str, bool, int] | None:
    """(timestamp, stream, partial, where the content starts) of a line whose first
    :data:`HEADER_MAX` bytes (or fewer: all of it) are ``prefix``; None if malformed."""
    try:
        parsed = parse_line(prefix)
    except CriLogError:
        return None
    return parsed.timestamp, parsed.stream, parsed.partial, len(prefix) - len(parsed.content)


async def _pread(fd: int, size: int, offset: int) -> bytes:
    # The read in a worker thread, so the loop never waits on the disk; the parsing stays on
    # the loop, a block at a time. (Parsing in the thread too would hold the GIL the loop needs
    # for every socket call, each a wait of up to the 5 ms switch interval, for every client.)
    # If the read is cancelled, the caller closes fd at once while the thread may still be in
    # pread: harmless, as pread moves no file offset, and on a descriptor number reused
    # meanwhile it either reads a regular file without side effects or fails (ESPIPE, EBADF);
    # its result is dropped.
    return await asyncio.to_thread(os.pread, fd, size, offset)


class _Joiner:
    """Lines of the file in, output out (:meth:`take`); no I/O.

    The line being joined is a run of pieces of one stream: it ends with an ``F`` piece, or
    (written then as it is, without a newline) when a piece of the other stream comes, or at
    the end of the read.
    """

    def __init__(
        self, path: str, *, timestamps: bool, since: int | None, line_cap: int, carry_max: int
    ) -> None:
        self._path = path
        self._timestamps = timestamps
        self._since = since
        # Stamps in the fixed form (our runtimes write no other) compare as text, in time order.
        self._since_text = (
            format_timestamp(since) if since is not None and 0 <= since < _YEAR_10000 else None
        )
        self._line_cap = line_cap
        self._carry_max = carry_max
        self._out: list[bytes] = []
        self._carry = b""  # the start of a file line whose newline has not been read
        # A file line longer than carry_max is passed on as it comes: its head, or _skipping
        # while a line is being skipped (malformed, or cut by the start of the read).
        self._long: tuple[str, str, bool] | None = None
        self._skipping = False
        # The line being joined.
        self._active = False
        self._stream = ""
        self._ts = ""  # its first piece's timestamp
        self._drop = False  # left out (before since)
        self._started = False  # some of it was written (its stamp with it)
        self._parts: list[bytes] = []
        self._size = 0

    @property
    def at_line_start(self) -> bool:
        """Whether what was fed so far ends with a whole file line."""
        return not self._carry and self._long is None and not self._skipping

    def skip_line(self) -> None:
        """Leave out what comes before the next newline (a read begun mid-line)."""
        self._skipping = True

    def take(self) -> bytes:
        """The output made since the last call."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def feed(self, data: bytes) -> None:
        if self._long is not None or self._skipping:
            nl = data.find(b"\n")
            if self._long is not None:
                ts, stream, partial = self._long
                self._piece(ts, stream, True, data if nl < 0 else data[:nl])
                if nl >= 0 and not partial:
                    self._piece(ts, stream, False, b"")
            if nl < 0:
                return
            self._long = None
            self._skipping = False
            data = data[nl + 1 :]
        buf = self._carry + data if self._carry else data
        pos = 0
        find = buf.find
        while (nl := find(b"\n", pos)) >= 0:
            self._line(buf, pos, nl)
            pos = nl + 1
        rest = buf[pos:]
        self._carry = b""
        if len(rest) <= self._carry_max:
            self._carry = rest
            return
        head = _head(rest[:HEADER_MAX])
        if head is None:
            self._malformed(rest)
            self._skipping = True
            return
        ts, stream, partial, content = head
        self._long = (ts, stream, partial)
        self._piece(ts, stream, True, rest[content:])

    def finish(self) -> None:
        """The end of the read: a last file line without its newline is a piece, and the line
        being joined is written as it is."""
        if self._carry:
            head = _head(self._carry[:HEADER_MAX])
            if head is None:
                self._malformed(self._carry)
            else:
                ts, stream, _, content = head
                self._piece(ts, stream, True, self._carry[content:])
        self._carry = b""
        self._long = None
        self._skipping = False
        self._end()

    def _line(self, buf: bytes, pos: int, nl: int) -> None:
        if nl - pos <= HEADER_MAX:
            try:
                ts, stream, partial, content = parse_line(buf[pos:nl])
            except CriLogError:
                self._malformed(buf[pos:nl])
                return
            self._piece(ts, stream, partial, content)
            return
        head = _head(buf[pos : pos + HEADER_MAX])
        if head is None:
            self._malformed(buf[pos : pos + HEADER_MAX])
            return
        ts, stream, partial, start = head
        self._piece(ts, stream, partial, buf[pos + start : nl])

    def _malformed(self, line: bytes) -> None:
        log.debug("skipping a malformed line of log file %s: %r", self._path, line[:100])

    def _piece(self, ts: str, stream: str, partial: bool, content: bytes) -> None:
        if self._active and stream != self._stream:
            self._end()  # the other stream cut in: what was joined goes out as it is
        if not self._active:
            self._active = True
            self._stream = stream
            self._ts = ts
            self._started = False
            self._drop = self._before_since(ts)
        if not self._drop:
            if content:
                self._parts.append(content)
                self._size += len(content)
            if not partial:
                self._parts.append(b"\n")
                self._flush()
            elif self._size >= self._line_cap:
                self._flush()
        if not partial:
            self._active = False

    def _before_since(self, ts: str) -> bool:
        if self._since is None:
            return False
        if self._since_text is not None and _is_fixed(ts):
            return ts < self._since_text
        return parse_timestamp(ts) < self._since

    def _end(self) -> None:
        if self._active and not self._drop:
            self._flush()
        self._active = False

    def _flush(self) -> None:
        if not self._started:
            self._started = True
            if self._timestamps:
                self._out.append(_fixed_timestamp(self._ts).encode() + b" ")
        self._out.extend(self._parts)
        self._parts = []
        self._size = 0


class _TailScan:
    """The pieces of a file walked backwards, to find where its last ``n`` lines start.

    Lines (as :class:`_Joiner` joins them) are runs of pieces, so a piece is the last of its
    line when it is an ``F`` piece, when the piece after it is of the other stream, or when it
    is the last piece of the file. The tail starts at the first piece of the ``n``-th line
    from the end: the piece after the last piece of the ``n + 1``-th.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0  # lines met
        self.start = 0  # the offset of the earliest piece met
        self._later: str | None = None  # the stream of the piece after the one met

    def piece(self, offset: int, stream: str, partial: bool) -> bool:
        """One piece, walking back; True once the tail's start is known (:attr:`start`)."""
        if not partial or stream != self._later:  # (the first piece met too: None)
            if self.count == self.n:
                return True
            self.count += 1
        self.start = offset
        self._later = stream
        return False


async def _tail_start(fd: int, size: int, n: int, block_size: int) -> int:
    """Where the last ``n`` lines of the first ``size`` bytes of the file start."""
    scan = _TailScan(n)
    hi = size
    after = b""  # the first bytes at hi: heads of lines starting just before it
    end = size  # the end of the line being walked (its newline, or size)
    buf = b""
    while hi > 0:
        lo = max(0, hi - block_size)
        block = await _pread(fd, hi - lo, lo)
        if len(block) < hi - lo:  # the file was cut short meanwhile: read what is left
            return 0
        buf = block + after
        i = hi - lo
        while (j := buf.rfind(b"\n", 0, i)) >= 0:
            head = buf[j + 1 : min(j + 1 + HEADER_MAX, end - lo)]
            if head and _tail_line(scan, lo + j + 1, head):
                return scan.start
            end, i = lo + j, j
        after = buf[:HEADER_MAX]
        hi = lo
    if end > 0 and _tail_line(scan, 0, buf[: min(HEADER_MAX, end)]):
        return scan.start
    return 0  # no more than n lines: all of them


def _tail_line(scan: _TailScan, offset: int, head: bytes) -> bool:
    # (A last line without its newline is read as a P piece; as the file's last piece it
    # ends its line whatever its tag, so its tag need not be changed here.)
    parsed = _head(head)
    if parsed is None:
        return False
    _, stream, partial, _ = parsed
    return scan.piece(offset, stream, partial)


async def read_log(
    path: str,
    opts: LogOptions,
    write: Callable[[bytes], Awaitable[None]],
    *,
    running: Callable[[], Awaitable[bool]],
    poll: float = 0.25,
    block_size: int = BLOCK_SIZE,
    line_cap: int = LINE_CAP,
) -> None:
    """Write the log in the CRI log file at ``path`` to ``write``, as ``opts`` asks (the rules
    and bounds are in this module's docstring).

    Args:
        path: the container's log file.
        opts: the request's options (``container`` and ``previous`` are the caller's to use:
            they choose ``path``).
        write: awaited with each chunk of output (never empty); its pace is the read's pace.
        running: with ``opts.follow``, whether the container still runs (asked only at the
            end of the file, at most every ``poll`` seconds).
        poll: seconds between looks at the end of a followed file.
        block_size: bytes read at a time (small ones are for tests).
        line_cap: a joined line longer than this is written in parts (see the docstring).

    Raises:
        FileNotFoundError: there is no file at ``path``.
        OSError: it cannot be read, or is not a regular file.
    """
    if block_size < 1 or line_cap < 1 or poll <= 0:
        raise ValueError("block_size and line_cap must be at least 1, poll above 0")
    # O_NONBLOCK: opening a FIFO planted at the path must not hang (reads of regular files
    # ignore the flag).
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path}: not a regular file")
        await _read(fd, path, info.st_size, opts, write, running, poll, block_size, line_cap)
    finally:
        os.close(fd)  # at once, a cancellation included


async def _read(
    fd: int,
    path: str,
    size: int,
    opts: LogOptions,
    write: Callable[[bytes], Awaitable[None]],
    running: Callable[[], Awaitable[bool]],
    poll: float,
    block_size: int,
    line_cap: int,
) -> None:
    since = opts.since_ns()
    follow = opts.follow
    start = 0
    mid_line = False
    if opts.tail_lines == 0:
        start = size
        mid_line = size > 0 and follow and await _pread(fd, 1, size - 1) != b"\n"
    elif opts.tail_lines is not None:
        start = await _tail_start(fd, size, opts.tail_lines, block_size)
    joiner = _Joiner(
        path,
        timestamps=opts.timestamps,
        since=since,
        line_cap=line_cap,
        carry_max=min(line_cap, max(block_size, HEADER_MAX)),
    )
    if mid_line:
        joiner.skip_line()
    remaining = opts.limit_bytes

    async def emit(chunk: bytes) -> bool:
        """Write ``chunk``, cut at the byte limit; False once the limit is reached."""
        nonlocal remaining
        if not chunk:
            return True
        if remaining is not None:
            if len(chunk) >= remaining:
                await write(chunk[:remaining])
                return False
            remaining -= len(chunk)
        await write(chunk)
        return True

    loop = asyncio.get_running_loop()
    pos = start
    stopping = False  # running() said False: read to the end once more
    asked: float | None = None
    while follow or pos < size or not joiner.at_line_start:
        data = await _pread(fd, block_size, pos)
        if data:
            pos += len(data)
            joiner.feed(data)
            if not await emit(joiner.take()):
                return
            continue
        if not follow or stopping:
            break
        now = loop.time()
        if asked is None or now - asked >= poll:
            asked = now
            if not await running():
                stopping = True
                continue
        await asyncio.sleep(poll)
    joiner.finish()
    await emit(joiner.take())


__all__ = ["BLOCK_SIZE", "HEADER_MAX", "LINE_CAP", "InvalidLogOptions", "LogOptions", "read_log"]
