"""Session accounting, recording and the audit log (docs/recording.md).

Every session the stream server runs is a :class:`Session`: the bytes each way, how it ended,
and, when the server records (``streamsrv serve --record DIR``), a :class:`Recording` of what
the terminal showed, written as an asciicast v2 file (``asciinema cat``/``play`` read it).
When the session ends, the :class:`Recorder` appends one JSON line about it to the audit log.

Recording never slows a session down or stops it:

* The session's side is O(1) per chunk: the bytes it already holds go on a queue
  (:meth:`Recording.output`); nothing is decoded, encoded or written on the event loop.
* A writer task per recording hands batches to a small thread pool of the recorder's own,
  which decodes (UTF-8, split characters joined across chunks) and writes them.
* A recording takes at most ``RecordConfig.max_rate`` bytes a second on average (bursts up
  to ``buffer``), and at most ``buffer`` bytes wait for the disk per session. Output beyond
  either (bulk output, a disk that cannot keep up or hangs) is not recorded until there is room
  again (for the disk: down to half the buffer); a marker event in the file says how many bytes
  the gap lacks and why, the audit line says ``"truncated": true`` and ``unrecordedBytes``,
  and the session goes on at its own speed.
  A disk that refuses (full, read-only) ends the recording: what was written stays readable
  (a half-written piece is cut off), and the audit line names the error.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import datetime
import hashlib
import json
import logging
import os
import re
import secrets
import shlex
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .requests import AnyRequest, ExecRequest, PortForwardRequest, kind_of

log = logging.getLogger(__name__)

#: What a recording's name looks like: the session's start (UTC) and 8 random hex digits.
#: Nothing else is ever turned into a path (so ``..`` and ``/`` cannot be).
NAME = re.compile(r"\A[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}\Z")
CAST = ".cast"
AUDIT_PREFIX = "audit-"
AUDIT_SUFFIX = ".jsonl"
#: Finished sessions' audit records kept in memory for the recordings list.
INDEX_SIZE = 2000
#: The size of a terminal that never said (a session without a tty, a client that sent none).
DEFAULT_SIZE = (80, 24)
DAY = 86400.0


@dataclass(frozen=True, slots=True)
class RecordConfig:
    """Where and what to record, and how much to keep (``streamsrv serve --record*``)."""

    directory: Path
    #: Record what the client typed too (asciicast "i" events). Off by default: input holds
    #: passwords typed at prompts that do not echo them.
    record_input: bool = False
    #: Recordings and audit files older than this (seconds) are removed; 0 keeps them.
    max_age: float = 30 * DAY
    #: Recordings and audit files together are kept under this many bytes by removing the
    #: oldest first; 0 is no bound.
    max_bytes: int = 1 << 30
    #: Bytes of one session's output that may wait for the disk; beyond it the recording has
    #: a gap (the session goes on).
    buffer: int = 4 << 20
    #: Bytes per second one session's recording takes on average (bursts up to ``buffer``);
    #: faster output leaves gaps. Bounds what a recording costs: every recorded byte is
    #: decoded, escaped and written, and a terminal shows far less than this to a reader.
    max_rate: int = 1 << 20
    #: Seconds between retention sweeps (one also runs at start).
    sweep_interval: float = 300.0


def token_identity(token: str) -> str:
    """How the audit log names a bearer token without revealing it."""
    return "bearer:" + hashlib.sha256(token.encode()).hexdigest()[:16]


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="milliseconds")


def new_name(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-" + secrets.token_hex(4)


# ------------------------------------------------------------------------- the cast format


class CastEncoder:
    """asciicast v2 lines, sans I/O: a header, then one line per event.

    Output and input are decoded as UTF-8 with one incremental decoder each, so a character
    split across two chunks comes out whole; bytes that are not UTF-8 become U+FFFD, as in
    asciinema's own recorder. Events are ``(seconds since start, code, bytes)`` with codes
    ``o`` (output), ``i`` (input), ``r`` (resize, ``b"COLSxROWS"``) and ``m`` (marker).
    """

    def __init__(self) -> None:
        factory = codecs.getincrementaldecoder("utf-8")
        self._decoders = {"o": factory("replace"), "i": factory("replace")}
        self.last = 0.0

    @staticmethod
    def header(
        *, width: int, height: int, timestamp: float, title: str, command: str | None
    ) -> dict[str, Any]:
        head: dict[str, Any] = {
            "version": 2,
            "width": width,
            "height": height,
            "timestamp": int(timestamp),
            "title": title,
            "env": {"TERM": "xterm-256color"},
        }
        if command is not None:
            head["command"] = command
        return head

    def events(self, events: Iterable[tuple[float, str, bytes]]) -> bytes:
        return b"".join(self.pieces(events))

    def pieces(
        self, events: Iterable[tuple[float, str, bytes]], size: int = 64 * 1024
    ) -> Iterator[bytes]:
        """The lines of ``events``, joined into pieces of about ``size`` bytes, each ending
        with a whole line (so a writer that fails between two keeps a readable file)."""
        out: list[bytes] = []
        held = 0
        for t, code, data in events:
            decoder = self._decoders.get(code)
            text = decoder.decode(data) if decoder is not None else data.decode("utf-8", "replace")
            if text or code == "m":
                out.append(_line([round(t, 6), code, text]))
                held += len(out[-1])
            self.last = t
            if held >= size:
                yield b"".join(out)
                out, held = [], 0
        if out:
            yield b"".join(out)

    def finish(self) -> bytes:
        """What the decoders still hold (a character cut off at the end), as last events."""
        return b"".join(
            _line([round(self.last, 6), code, rest])
            for code, decoder in self._decoders.items()
            if (rest := decoder.decode(b"", final=True))
        )


def _line(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": ")).encode() + b"\n"


# --------------------------------------------------------------------------- one session


@dataclass(eq=False, slots=True)
class Session:
    """One session's accounting, from its upgrade to its end.

    Handlers count bytes on it (``bytes_in``: client to container; ``bytes_out``: back) and
    say how it ended (``exit_code``, ``error``); :class:`~streamsrv.context.StreamContext`
    turns it into metrics and, with a recorder, a recording and an audit line.
    """

    request: AnyRequest
    client: str = ""
    name: str = ""
    started_at: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    transport: str = ""
    protocol: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    exit_code: int | None = None
    error: str | None = None
    recording: Recording | None = None
    #: Pod ports a port-forward dialled (SPDY names them per stream, not in the request).
    ports: set[int] = field(default_factory=set)
    #: Set when the upgrade succeeded: only established sessions are counted and recorded.
    established: bool = False
    ended_at: float | None = None

    @property
    def kind(self) -> str:
        return kind_of(self.request)

    def output(self, data: bytes) -> None:
        """Bytes from the container to the client (stdout, stderr, pod to client)."""
        self.bytes_out += len(data)
        if self.recording is not None:
            self.recording.output(data)

    def input(self, data: bytes) -> None:
        """Bytes from the client to the container."""
        self.bytes_in += len(data)
        if self.recording is not None:
            self.recording.input(data)

    def resized(self, width: int, height: int) -> None:
        if self.recording is not None:
            self.recording.resize(width, height)

    def audit(self) -> dict[str, Any]:
        """The session's audit record (docs/recording.md, "The audit log")."""
        req = self.request
        origin = req.origin
        end = self.ended_at if self.ended_at is not None else time.time()
        record: dict[str, Any] = {
            "id": self.name,
            "kind": self.kind,
            "user": origin.user if origin and origin.user else None,
            "via": origin.via if origin and origin.via else None,
            "namespace": origin.namespace if origin and origin.namespace else None,
            "pod": origin.pod if origin and origin.pod else None,
            "container": origin.container if origin and origin.container else None,
        }
        if isinstance(req, PortForwardRequest):
            record["sandboxId"] = req.sandbox_id
            record["ports"] = sorted(set(req.ports) | self.ports)
        else:
            record["containerId"] = req.container_id
            record["command"] = list(req.cmd) if isinstance(req, ExecRequest) else None
            record["tty"] = req.tty
            record["stdin"] = req.stdin
        rec = self.recording
        record.update(
            {
                "transport": self.transport,
                "protocol": self.protocol,
                "client": self.client,
                "start": _iso(self.started_at),
                "end": _iso(end),
                "durationSeconds": round(end - self.started_at, 3),
                "exitCode": self.exit_code,
                "error": self.error,
                "bytesIn": self.bytes_in,
                "bytesOut": self.bytes_out,
                "recording": rec.name + CAST if rec is not None else None,
                "truncated": rec.truncated if rec is not None else False,
                "unrecordedBytes": rec.unrecorded if rec is not None else 0,
                "recordingError": rec.failed if rec is not None else None,
            }
        )
        return record


# ------------------------------------------------------------------------- one recording


class Recording:
    """One session's cast file, written off the event loop (see the module's docstring)."""

    def __init__(
        self,
        recorder: Recorder,
        name: str,
        header: dict[str, Any],
        *,
        record_input: bool,
        limit: int,
        rate: int = 1 << 20,
    ) -> None:
        self.recorder = recorder
        self.name = name
        self.path = recorder.directory / (name + CAST)
        self.truncated = False
        #: Why the file could not be written (the OS's message), if it could not.
        self.failed: str | None = None
        self._header = header
        self._record_input = record_input
        self._limit = limit
        self._rate = rate
        self._t0 = self._last = time.monotonic()
        self._tokens = float(limit)  # the rate's bucket: bursts up to the buffer
        self._events: collections.deque[tuple[float, str, bytes]] = collections.deque()
        self._queued = 0  # bytes in _events
        self._writing = 0  # bytes handed to the writer thread and not yet written
        self._stopped = False  # nothing more is queued: failed or closed
        self._skipping = False  # in a gap: the disk fell behind by more than the buffer
        self._gap = 0  # bytes dropped in the current gap
        self._why = ""  # why the current gap began
        #: Bytes of the session's stream not recorded (gaps), for the audit line.
        self.unrecorded = 0
        self._fresh = True  # no event queued yet (the header is still open to a resize)
        self._closed = False
        self._wake = asyncio.Event()
        self._encoder = CastEncoder()
        self._fd: int | None = None
        self._good = 0  # the file's length after the last complete write
        self._audit: dict[str, Any] | None = None

    # -- the session's side: O(1) per chunk, never blocks, never raises

    def output(self, data: bytes) -> None:
        self._put("o", data)

    def input(self, data: bytes) -> None:
        if self._record_input:
            self._put("i", data)

    def resize(self, width: int, height: int) -> None:
        if self._fresh:  # nothing recorded yet: the header takes the size
            self._header["width"], self._header["height"] = width, height
        else:
            self._put("r", f"{width}x{height}".encode())

    def _put(self, code: str, data: bytes) -> None:
        if self._stopped:
            return
        now = time.monotonic()
        self._tokens = min(float(self._limit), self._tokens + (now - self._last) * self._rate)
        self._last = now
        n = len(data)
        # In a gap, resume only once the disk has caught up to half the buffer.
        room = (self._limit // 2 if self._skipping else self._limit) - self._queued - self._writing
        if n > room or n > self._tokens:
            if not self._skipping:
                self.truncated = self._skipping = True
                self._why = (
                    f"output came faster than {self._rate} bytes/s"
                    if n > self._tokens
                    else "the disk could not keep up"
                )
            self._gap += n
            self.unrecorded += n
            return
        if self._skipping:
            self._end_gap(now)
        if not isinstance(data, bytes):  # the runtime may reuse a buffer it lent us
            data = bytes(data)
        self._tokens -= n
        self._fresh = False
        self._events.append((now - self._t0, code, data))
        self._queued += n
        self._wake.set()

    def _end_gap(self, now: float) -> None:
        """A marker event where the gap was: what the recording lacks there, and why."""
        why = f"{self._gap} bytes not recorded here: {self._why}"
        self._events.append((now - self._t0, "m", why.encode()))
        self._skipping, self._gap = False, 0
        self._wake.set()

    def close(self, audit: dict[str, Any]) -> None:
        """The session ended: write what is queued, close the file, then the audit line."""
        if self._skipping and not self._stopped:
            self._end_gap(time.monotonic())
        self._audit = audit
        self._stopped = self._closed = True
        self._wake.set()

    # -- the writer task and its thread

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        pool = self.recorder.pool
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._events:
                    batch, self._events = self._events, collections.deque()
                    self._writing, self._queued = self._queued, 0
                    error = await loop.run_in_executor(pool, self._write, batch)
                    self._writing = 0
                    if error is not None and self.failed is None:
                        self.failed = error
                        self.truncated = True
                        self._stopped = True
                        self._events.clear()
                        self._queued = 0
                        self.recorder.warn(f"recording {self.name} failed: {error}")
                if self._closed and not self._events:
                    break
        finally:
            with contextlib.suppress(Exception):
                await loop.run_in_executor(pool, self._finish)
            audit = self._audit
            if audit is not None:
                audit["truncated"] = self.truncated
                audit["unrecordedBytes"] = self.unrecorded
                audit["recordingError"] = self.failed
                await self.recorder.write_audit(audit)

    def _write(self, batch: Iterable[tuple[float, str, bytes]]) -> str | None:
        """In the recorder's thread: encode ``batch`` and append it; the OS error, if any."""
        if self.failed is not None:
            return None
        try:
            if self._fd is None:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                self._fd = os.open(self.path, flags, 0o600)
                self._append(_line(self._header))
            for piece in self._encoder.pieces(batch):
                self._append(piece)
        except OSError as exc:
            return self._fail(exc)
        return None

    def _append(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._good += len(data)

    def _fail(self, exc: OSError) -> str:
        if self._fd is not None:
            with contextlib.suppress(OSError):  # a half-written line would end what reads it
                os.ftruncate(self._fd, self._good)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            if not self._good:  # not even the header: no file rather than an unreadable one
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            self._fd = -1  # never reopened
        return exc.strerror or str(exc)

    def _finish(self) -> None:
        if self._fd is None and self.failed is None:
            error = self._write(())  # a session with no output still leaves its header
            if error is not None:
                self.failed, self.truncated = error, True
        fd, self._fd = self._fd, -1
        if fd is not None and fd >= 0:
            try:
                if self.failed is None:
                    self._append(self._encoder.finish())
            except OSError as exc:
                self.failed = self.failed or exc.strerror or str(exc)
                self.truncated = True
            finally:
                with contextlib.suppress(OSError):
                    os.close(fd)


# ------------------------------------------------------------------------------- recorder


class Recorder:
    """The recording directory: cast files, daily audit files, retention, and the list of
    recordings the browser page shows.

    Files are 0600 in a 0700 directory. The audit log is one file per UTC day
    (``audit-YYYYMMDD.jsonl``), one JSON object per line, appended with one ``write`` each.
    """

    def __init__(
        self,
        config: RecordConfig,
        *,
        on_recorded: Callable[[Recording], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.directory = config.directory
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="streamsrv-record")
        self._clock = clock
        self._on_recorded = on_recorded
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        #: Finished sessions' audit records by recording name, newest last.
        self.index: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self.active: dict[str, Recording] = {}
        #: Sessions being recorded, by recording name (the list shows them as running).
        self.live: dict[str, Session] = {}
        self._warned = 0.0

    # -- lifecycle

    async def start(self) -> None:
        """Make the directory (0700), read the recent audit records, sweep, and keep sweeping.

        A directory that cannot be made or written is logged, not raised: sessions run
        unrecorded (each one's audit attempt is logged), and the server still serves."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.pool, self._prepare)
        except OSError as exc:
            log.error("recording directory %s is not usable: %s", self.directory, exc)
        self._sweeper = asyncio.ensure_future(self._sweep_forever())

    def _prepare(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True)
            os.chmod(self.directory, 0o700)  # whatever the umask
        except FileExistsError:
            # Someone else's directory keeps its mode (--record /tmp must not make /tmp 0700);
            # the files are 0600 and made with O_EXCL|O_NOFOLLOW either way.
            mode = stat.S_IMODE(os.stat(self.directory).st_mode)
            if not stat.S_ISDIR(os.stat(self.directory).st_mode):
                raise NotADirectoryError(f"{self.directory} is not a directory") from None
            if mode & 0o077:
                log.warning(
                    "recording directory %s is open to others (mode %o); its files are 0600, "
                    "but `chmod 700` it to keep their names private too",
                    self.directory,
                    mode,
                )
        for record in self._read_index():
            name = record.get("recording")
            if isinstance(name, str) and name.endswith(CAST):
                self.index[name[: -len(CAST)]] = record
        while len(self.index) > INDEX_SIZE:
            self.index.popitem(last=False)
        self.sweep()

    def _read_index(self) -> Iterator[dict[str, Any]]:
        files = sorted(self.directory.glob(f"{AUDIT_PREFIX}*{AUDIT_SUFFIX}"))
        for path in files[-3:]:  # the last three days' files give the list its end states
            with contextlib.suppress(OSError), open(path, "rb") as f:
                for line in f:
                    with contextlib.suppress(ValueError):
                        record = json.loads(line)
                        if isinstance(record, dict):
                            yield record

    async def close(self, wait: float = 10.0) -> None:
        """Finish the recordings still being written (at most ``wait`` seconds), stop sweeping."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=wait)
            for task in pending:
                log.warning("recording not finished at shutdown: %s", task.get_name())
                task.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- sessions

    def begin(self, session: Session) -> None:
        """Start recording ``session`` (exec and attach; port-forward gets an audit line)."""
        if isinstance(session.request, PortForwardRequest):
            return
        req = session.request
        origin = req.origin
        title = (
            "/".join(p for p in (origin.namespace, origin.pod, origin.container) if p)
            if origin
            else ""
        )
        width, height = DEFAULT_SIZE  # until the client's first size (Recording.resize)
        header = CastEncoder.header(
            width=width,
            height=height,
            timestamp=session.started_at,
            title=title or req.container_id[:12],
            command=shlex.join(req.cmd) if isinstance(req, ExecRequest) else None,
        )
        rec = Recording(
            self,
            session.name,
            header,
            record_input=self.config.record_input,
            limit=self.config.buffer,
            rate=self.config.max_rate,
        )
        session.recording = rec
        self.active[rec.name] = rec
        self.live[rec.name] = session
        task = asyncio.ensure_future(self._run(rec))
        task.set_name(f"recording {rec.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, rec: Recording) -> None:
        try:
            await rec.run()
        finally:
            self.active.pop(rec.name, None)
            if self._on_recorded is not None:
                self._on_recorded(rec)

    def end(self, session: Session) -> None:
        """The session ended: its audit line goes out once its recording is written."""
        record = session.audit()
        self._remember(record)  # the list shows the end at once, the file follows
        if session.recording is not None:
            self.live.pop(session.recording.name, None)
            session.recording.close(record)
            return
        task = asyncio.ensure_future(self.write_audit(record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _remember(self, record: dict[str, Any]) -> None:
        name = record.get("recording")
        if isinstance(name, str):
            self.index[name[: -len(CAST)]] = record
            while len(self.index) > INDEX_SIZE:
                self.index.popitem(last=False)

    async def write_audit(self, record: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.pool, self._append_audit, record)
        except (OSError, RuntimeError) as exc:  # RuntimeError: the pool is shut down
            # Never lost: a record the disk refuses goes to the server's log, whole.
            self.warn(f"audit records cannot be written to {self.directory}: {exc}")
            log.warning("audit: %s", json.dumps(record, separators=(",", ":")))

    def _append_audit(self, record: dict[str, Any]) -> None:
        day = time.strftime("%Y%m%d", time.gmtime(self._clock()))
        path = self.directory / f"{AUDIT_PREFIX}{day}{AUDIT_SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        try:
            line = json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def warn(self, message: str) -> None:
        """A disk problem, logged at most once a minute (every session would say it)."""
        now = time.monotonic()
        if now >= self._warned:
            self._warned = now + 60.0
            log.warning("%s", message)
        else:
            log.debug("%s", message)

    # -- retention

    async def _sweep_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            try:
                await loop.run_in_executor(self.pool, self.sweep)
            except Exception as exc:  # a sweep that fails is retried at the next one
                self.warn(f"recording retention sweep failed: {exc!r}")

    def sweep(self) -> list[str]:
        """Remove recordings and audit files past ``max_age``, then the oldest ones until the
        rest fit ``max_bytes``; a recording still being written is never removed. Returns the
        names of the files removed."""
        files: list[tuple[float, int, Path]] = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if not entry.is_file(follow_symlinks=False) or not _ours(entry.name):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat(follow_symlinks=False)
                    files.append((st.st_mtime, st.st_size, Path(entry.path)))
        files.sort()
        now = self._clock()
        today = f"{AUDIT_PREFIX}{time.strftime('%Y%m%d', time.gmtime(now))}{AUDIT_SUFFIX}"
        keep = {rec.path.name for rec in list(self.active.values())} | {today}
        removed: list[str] = []
        total = sum(size for _, size, _ in files)
        for mtime, size, path in files:
            if path.name in keep:
                continue
            too_old = self.config.max_age > 0 and now - mtime > self.config.max_age
            too_big = self.config.max_bytes > 0 and total > self.config.max_bytes
            if not (too_old or too_big):
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            total -= size
            removed.append(path.name)
            if path.name.endswith(CAST):
                self.index.pop(path.name[: -len(CAST)], None)
        if removed:
            log.info("recording retention removed %d files", len(removed))
        return removed

    # -- the list of recordings (docs/api.md, "Recordings")

    def listing(self, limit: int = 500) -> list[dict[str, Any]]:
        """The newest ``limit`` recordings, with what their audit records say (blocking: run
        it in a thread)."""
        names = sorted(
            (p.name[: -len(CAST)] for p in self.directory.glob("*" + CAST)
             if NAME.match(p.name[: -len(CAST)])),
            reverse=True,
        )[:limit]  # fmt: skip
        items = []
        for name in names:
            path = self.directory / (name + CAST)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            items.append(self._item(name, size))
        return items

    def _item(self, name: str, size: int) -> dict[str, Any]:
        """One recording as the list shows it: from its audit record once the session ended,
        from the session while it runs (``end`` and ``exitCode`` null), and from the cast's
        header for a recording with neither (a server that stopped without writing it)."""
        record = self.index.get(name)
        if record is None and (live := self.live.get(name)) is not None:
            record = {**live.audit(), "end": None, "exitCode": None}
        if record is None:
            record = self._from_header(name)
        item = {key: record.get(key) for key in ITEM_KEYS}
        item.update({"name": name, "size": size, "truncated": bool(record.get("truncated"))})
        return item

    def _from_header(self, name: str) -> dict[str, Any]:
        head: Any = {}
        with (
            contextlib.suppress(OSError, ValueError),
            open(self.directory / (name + CAST), "rb") as f,
        ):
            head = json.loads(f.readline(64 * 1024))
        if not isinstance(head, dict):
            return {}
        parts = str(head.get("title") or "").split("/")
        command = head.get("command")
        ts = head.get("timestamp")
        return {
            "kind": None,
            "namespace": parts[0] if len(parts) == 3 else None,
            "pod": parts[1] if len(parts) == 3 else None,
            "container": parts[2] if len(parts) == 3 else None,
            "command": _split(command) if isinstance(command, str) else None,
            "start": _iso(ts) if isinstance(ts, int | float) else None,
        }

    def path_of(self, name: str) -> Path | None:
        """The cast file called ``name``, or None if ``name`` is not a recording's name."""
        if not NAME.match(name):
            return None
        return self.directory / (name + CAST)


#: What each item of the recordings list has (docs/recording.md, "The recordings API").
ITEM_KEYS = (
    "kind", "namespace", "pod", "container", "command", "tty", "user", "start", "end",
    "exitCode",
)  # fmt: skip


def _split(command: str) -> list[str] | None:
    try:
        return shlex.split(command)
    except ValueError:
        return None


def _ours(name: str) -> bool:
    if name.endswith(CAST):
        return bool(NAME.match(name[: -len(CAST)]))
    return name.startswith(AUDIT_PREFIX) and name.endswith(AUDIT_SUFFIX)


__all__ = [
    "NAME",
    "CastEncoder",
    "RecordConfig",
    "Recorder",
    "Recording",
    "Session",
    "new_name",
    "token_identity",
]
