"""A socket-level fuzzer against a live ``streamsrv serve``, with a canary session.

Run::

    .venv/bin/python -m soak.fuzz [--frames N] [--canary-bytes N] [--time-limit S]
                                  [--runtime process|docker] [--seed S] [--concurrency C]

or ``await soak.fuzz.run(frames, canary_bytes, time_limit, runtime, seed)``, which returns the
figures as a dict.

What it does:

1. Starts a server (``python -m streamsrv serve --runtime process`` by default) and one pod with
   three containers: ``main`` (``sleep``: the exec target), ``echo`` (``busybox nc -ll -e cat``:
   the port-forward target) and ``attach`` (``cat`` with stdin: the attach target).
2. Warms up (one clean session of every kind), then records the baseline: open fds, child
   processes and RSS from ``/proc``, ``streamsrv_tasks`` and ``streamsrv_connections`` from
   ``/metrics``.
3. Starts the canary: a WebSocket v5 exec of ``cat`` that sends ``canary_bytes`` of seeded
   data and checks the sha256 of what comes back, and the ``Success`` status. It is paced by
   the fuzzer's progress, so it stays open for the whole fuzzing and is then finished at full
   speed.
4. Runs ``concurrency`` fuzz connections at a time over real TCP+TLS until ``frames`` frames
   were sent or ``time_limit`` passed. Each connection picks a scenario: SPDY exec, attach or
   port-forward (control and data frames, header blocks, mutated); WebSocket exec, attach,
   port-forward channels or the SPDY tunnel (mutated frames); raw HTTP garbage before any
   upgrade; non-TLS bytes on the TLS port. Requests carry the right token, a wrong one or none.
   Everything is drawn from a ``random.Random`` seeded by ``(seed, connection index)``.
5. Waits for the server to settle and checks (``figures["checks"]``): the process is alive
   and never stopped answering ``/healthz`` for ``HANG_AFTER`` seconds (a hang stops the
   fuzzing at once and records the server's stacks), ``/healthz`` answers, the canary's bytes
   came back intact with a ``Success`` status, a fresh exec works, peak RSS (sampled every
   0.5 s) stayed under :func:`rss_bound_kib`, fds and tasks are back to the baseline within
   ``FD_TOLERANCE``/``TASK_TOLERANCE``, no fd of a dead terminal is left (a precise leak, no
   tolerance), no process is left beside the pod's own, no traceback other than "the client
   went away" is in the server log, and SIGTERM ends the server with exit code 0.

   ``streamsrv_connections`` is reported, not checked: the gauge counts a connection whose
   TLS handshake failed until ``max_connections`` is reached, and the fuzzer makes such
   connections on purpose.

It prints a one-line summary, a Markdown table row, and exits non-zero if a check failed.

A *frame* is one unit of fuzz material handed to the kernel: a SPDY frame (inside the
WebSocket tunnel too: the WebSocket messages that carry them are not counted), a WebSocket
frame, or one blob of HTTP or non-TLS garbage. Mutations (bit flips, bogus lengths, truncation,
duplication, swaps, inserted garbage) each count as the frames they leave on the wire.

Port numbers in port-forward requests are limited to the pod's echo port, one closed port and
invalid values: with the process runtime a dial goes to this host's loopback, and a fuzzer must
not make the server dial arbitrary local services (its own listener included).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import ssl
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from soak.common import (
    MIB,
    LiveServer,
    Sampler,
    Snapshot,
    descendants,
    fd_kinds,
    free_port,
    pod_manifest,
    row,
)
from streamsrv.protocol.spdy import DICTIONARY

# ----------------------------------------------------------------------------- constants

POD = "fuzz"
GIB = 1024 * MIB
DEFAULT_FRAMES = 1_000_000
DEFAULT_CANARY = GIB
DEFAULT_TIME_LIMIT = 900.0
DEFAULT_CONCURRENCY = 32
#: fds and tasks may end this much above the baseline: a lazily created resource that the
#: warm-up did not touch (one executor thread's wake-up pipe, a cached engine connection on
#: Docker). A leak per connection or per session would be thousands over, not two.
FD_TOLERANCE = 2
TASK_TOLERANCE = 2
#: An fd of a pseudo-terminal whose master is closed (a leaked pty slave).
DEAD_TERMINAL = re.compile(r"^/dev/pts/\d+ \(deleted\)$")
SETTLE_TIMEOUT = 90.0
#: The server counts as hung once no /healthz has been answered for this long (each check
#: waits 10 s): fuzzing stops and the process's stacks are recorded.
HANG_AFTER = 60.0
CONNECT_TIMEOUT = 15.0
HEAD_TIMEOUT = 15.0
#: A fuzz connection whose writes make no progress for this long is abandoned ("stalled"):
#: the server may rightly stop reading (stdin of a process that never started is bounded by
#: read_buffer until the stream-creation timeout).
STALL_TIMEOUT = 5.0
#: The whole life of one fuzz connection; past it the connection counts as "hung".
CONNECTION_TIMEOUT = 90.0
#: The canary fails if data it sent has not come back for this long.
CANARY_STALL = 120.0
CANARY_CHUNK = 256 * 1024

# SPDY
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = (
    1, 2, 3, 4, 6, 7, 8, 9,
)  # fmt: skip
ZLIB_PREFIX = b"\x78\xf9" + struct.pack(">I", zlib.adler32(DICTIONARY))
_CTRL = struct.Struct(">HHI")
_DATA = struct.Struct(">II")
_U32 = struct.Struct(">I")
_TWO = struct.Struct(">II")

# WebSocket opcodes
CONT, TEXT, BINARY, CLOSE, PINGOP, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


# ----------------------------------------------------------------------------- SPDY frames


def ctrl(kind: int, body: bytes, flags: int = 0, version: int = 3) -> bytes:
    """A SPDY control frame (the length is the body's, 24 bits)."""
    return (
        _CTRL.pack(0x8000 | (version & 0x7FFF), kind & 0xFFFF, (flags & 0xFF) << 24 | len(body))
        + body
    )


def data_frame(stream_id: int, payload: bytes, flags: int = 0) -> bytes:
    return _DATA.pack(stream_id & 0x7FFFFFFF, (flags & 0xFF) << 24 | len(payload)) + payload


def syn_stream(stream_id: int, block: bytes, flags: int = 0, prio: int = 0, slot: int = 0) -> bytes:
    body = _TWO.pack(stream_id & 0xFFFFFFFF, 0) + bytes(((prio & 7) << 5, slot & 0xFF)) + block
    return ctrl(SYN_STREAM, body, flags)


def nv_block(pairs: Sequence[tuple[bytes, bytes]], count: int | None = None) -> bytes:
    """An uncompressed SPDY/3 name/value block, written as given (no lowercasing, no merging),
    with ``count`` declared (default: the real one)."""
    parts = [_U32.pack(len(pairs) if count is None else count)]
    for name, value in pairs:
        parts += [_U32.pack(len(name)), name, _U32.pack(len(value)), value]
    return b"".join(parts)


def raw_deflate(block: bytes) -> bytes:
    """``block`` as self-contained deflate data ending in a sync flush.

    It refers to nothing before it, so it can be spliced into any connection's header stream
    at a block boundary (after the zlib header and dictionary id for a connection's first
    block): the server's inflater sees a valid stream.
    """
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    return z.compress(block) + z.flush(zlib.Z_SYNC_FLUSH)


@dataclass(frozen=True, slots=True)
class Block:
    """A header block: raw, and compressed for splicing."""

    raw: bytes
    spliced: bytes


def make_block(raw: bytes) -> Block:
    return Block(raw, raw_deflate(raw))


class HeaderStream:
    """One connection's compressed header blocks: spliced self-contained blocks (cheap), or a
    real per-connection zlib stream with the SPDY dictionary (as kubectl does)."""

    def __init__(self, real: bool) -> None:
        self.first = True
        self.z = (
            zlib.compressobj(6, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
            if real
            else None
        )

    def compress(self, block: Block) -> bytes:
        if self.z is not None:
            return self.z.compress(block.raw) + self.z.flush(zlib.Z_SYNC_FLUSH)
        if self.first:
            self.first = False
            return ZLIB_PREFIX + block.spliced
        return block.spliced


# ----------------------------------------------------------------------------- WebSocket frames


def xor_mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n or key == b"\0\0\0\0":
        return payload
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def ws_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    key: bytes | None = b"\0\0\0\0",
    declared: int | None = None,
) -> bytes:
    """One WebSocket frame; ``key=None`` sends it unmasked, ``declared`` lies about the length."""
    length = len(payload) if declared is None else declared
    first = (0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0xF)
    mask_bit = 0x80 if key is not None else 0
    if length < 126:
        head = bytes((first, mask_bit | length))
    elif length < 0x10000:
        head = bytes((first, mask_bit | 126)) + struct.pack(">H", length)
    else:
        head = bytes((first, mask_bit | 127)) + struct.pack(">Q", length & 0xFFFFFFFFFFFFFFFF)
    if key is None:
        return head + payload
    return head + key + xor_mask(payload, key)


# ----------------------------------------------------------------------------- material


RESIZE_PAYLOADS: list[bytes] = [
    b'{"Width":80,"Height":24}',
    b'{"width":132,"height":43}\n{"Width":80,"Height":24}\n',
    b'{"Width":99999999999999999999,"Height":-1}',
    b'{"Width":"80","Height":null}',
    b'{"Width":',
    b"}}}}{{{{",
    b"[" * 5000,
    b"{" * 5000,
    b'{"a":' * 2000,
    b'"' + b"x" * 20000,
    b'{"Width":1,"Height":1}' * 500,
    b"\xff\xfe\x00\x01garbage",
    b'{"Width":65535,"Height":65535}',
    b'{"Width":0,"Height":0}',
    b"null",
    b"",
    b'{"Width":1e308,"Height":-0.0}',
    b'{"\\ud800":1}',
]


@dataclass
class Material:
    """Everything a connection draws from, made once from the seed (cheap to reuse)."""

    seed: int
    echo_port: int
    closed_port: int
    token: str
    rand: bytes = b""
    exec_blocks: dict[str, Block] = field(default_factory=dict)
    junk_blocks: list[Block] = field(default_factory=list)
    fatal_blocks: list[Block] = field(default_factory=list)
    pf_ports: list[bytes] = field(default_factory=list)
    ws_binary: list[tuple[bytes, int]] = field(default_factory=list)
    ws_base64: list[tuple[bytes, int]] = field(default_factory=list)
    ws_pf_binary: list[tuple[bytes, int]] = field(default_factory=list)
    ws_pf_base64: list[tuple[bytes, int]] = field(default_factory=list)
    ws_control: list[bytes] = field(default_factory=list)
    ws_fatal: list[bytes] = field(default_factory=list)
    http_garbage: list[bytes] = field(default_factory=list)
    tls_garbage: list[bytes] = field(default_factory=list)
    _pf_cache: dict[tuple[bytes, bytes, int, bool], Block] = field(default_factory=dict)

    @classmethod
    def make(cls, seed: int, echo_port: int, closed_port: int, token: str) -> Material:
        m = cls(seed, echo_port, closed_port, token)
        rng = random.Random(f"material:{seed}")
        m.rand = rng.randbytes(4 * MIB)
        m._spdy(rng)
        m._websocket(rng)
        m._http(rng)
        return m

    def payload(self, rng: random.Random, size: int) -> bytes:
        start = rng.randrange(len(self.rand) - size) if size < len(self.rand) else 0
        return self.rand[start : start + size]

    def payload_size(self, rng: random.Random) -> int:
        r = rng.random()
        if r < 0.7:
            return rng.randrange(0, 256)
        if r < 0.97:
            return rng.randrange(256, 4096)
        return rng.randrange(4096, 40000)

    # ---------------------------------------------------------------- SPDY header blocks

    def _spdy(self, rng: random.Random) -> None:
        for kind in ("error", "stdin", "stdout", "stderr", "resize", "data"):
            self.exec_blocks[kind] = make_block(nv_block([(b"streamtype", kind.encode())]))

        def word(n: int) -> bytes:
            return bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz-0123456789") for _ in range(n))

        junk: list[bytes] = [
            nv_block([]),  # no headers at all
            nv_block([(b"streamtype", b"")]),
            nv_block([(b"streamtype", b"STDIN")]),
            nv_block([(b"streamtype", b"error\x00stdin")]),
            nv_block([(b"streamtype", b"stdin"), (b"streamtype", b"stdout")]),  # merged
            nv_block([(b"streamtype", b"\xff\xfe\xfd")]),
            nv_block([(b"streamtype", b"x" * 60000)]),  # under 64 KiB inflated
            nv_block([(word(8), word(8)) for _ in range(100)]),  # exactly max_header_count
            nv_block([(b"", b"")]),
            nv_block([(b"port", b"80"), (b"requestid", b"1")]),
        ]
        for _ in range(40):
            pairs = [(word(rng.randrange(1, 20)), word(rng.randrange(0, 60)))]
            pairs += [(word(rng.randrange(1, 12)), word(rng.randrange(0, 30))) for _ in range(5)]
            junk.append(nv_block(pairs[: rng.randrange(1, 7)]))
        self.junk_blocks = [make_block(b) for b in junk]

        zeros = nv_block([(b"a", bytes(MIB))])
        fatal: list[bytes] = [
            nv_block([(b"Streamtype", b"stdin")]),  # uppercase name
            nv_block([(b"host", b"x")]),
            nv_block([(b"connection", b"close")]),
            nv_block([(b"transfer-encoding", b"chunked")]),
            nv_block([(word(4), b"v") for _ in range(101)]),  # one over max_header_count
            nv_block([], count=0xFFFFFFFF),
            nv_block([(b"a", b"b")], count=2),  # truncated
            nv_block([(b"a", b"b")]) + b"trailing",
            _U32.pack(1) + _U32.pack(0xFFFFFFF0) + b"a",  # name length past the end
            b"\x00\x00",  # shorter than a count
            zeros,  # 1 MiB inflated: a small bomb
            nv_block([(b"a", bytes(64 * 1024 - 13))]) + b"x",  # just over 64 KiB
            nv_block([(word(3), bytes(200)) for _ in range(100)]) + bytes(60000),
        ]
        self.fatal_blocks = [make_block(b) for b in fatal]
        # A big bomb: 64 MiB of zeros in about 64 KiB of deflate data.
        bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
        big = [bomb.compress(_U32.pack(1) + _U32.pack(1) + b"a" + _U32.pack(64 * MIB))]
        chunk = bytes(MIB)
        for _ in range(64):
            big.append(bomb.compress(chunk))
        big.append(bomb.flush(zlib.Z_SYNC_FLUSH))
        self.fatal_blocks.append(Block(b"", b"".join(big)))

        self.pf_ports = [str(self.echo_port).encode()] * 6 + [
            str(self.closed_port).encode(),
            b"0",
            b"65536",
            b"abc",
            b"",
            b"-1",
            b" %d" % self.echo_port,
            b"%d\x00%d" % (self.echo_port, self.echo_port),
        ]

    def pf_block(self, kind: bytes, port: bytes, rid: int, with_rid: bool = True) -> Block:
        key = (kind, port, rid, with_rid)
        block = self._pf_cache.get(key)
        if block is None:
            pairs = [(b"streamtype", kind), (b"port", port)]
            if with_rid:
                pairs.append((b"requestid", str(rid).encode()))
            block = self._pf_cache[key] = make_block(nv_block(pairs))
        return block

    # ---------------------------------------------------------------- WebSocket frames

    def _key(self, rng: random.Random) -> bytes:
        return b"\0\0\0\0" if rng.random() < 0.3 else rng.randbytes(4)

    def _message(self, rng: random.Random, opcode: int, payload: bytes) -> tuple[bytes, int]:
        """A message as one frame, or (sometimes) fragmented into continuation frames."""
        if len(payload) > 8 and rng.random() < 0.1:
            cuts = sorted(rng.sample(range(1, len(payload)), min(3, len(payload) - 1)))
            pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
            frames = []
            for i, piece in enumerate(pieces):
                frames.append(
                    ws_frame(
                        opcode if i == 0 else CONT,
                        piece,
                        fin=i == len(pieces) - 1,
                        key=self._key(rng),
                    )
                )
                if i == 0 and rng.random() < 0.3:  # a ping between fragments is allowed
                    frames.append(ws_frame(PINGOP, b"mid", key=self._key(rng)))
            return b"".join(frames), len(frames)
        return ws_frame(opcode, payload, key=self._key(rng)), 1

    def _channel_payload(self, rng: random.Random, pf: bool) -> tuple[int, bytes]:
        r = rng.random()
        if pf:
            if r < 0.7:
                return 0, self.payload(rng, self.payload_size(rng))
            if r < 0.8:
                return 1, self.payload(rng, rng.randrange(0, 64))
            if r < 0.9:
                return rng.randrange(2, 256), self.payload(rng, rng.randrange(0, 64))
            return 0, b""
        if r < 0.55:
            return 0, self.payload(rng, self.payload_size(rng))
        if r < 0.7:
            return 4, rng.choice(RESIZE_PAYLOADS)
        if r < 0.85:
            return rng.randrange(1, 255), self.payload(rng, rng.randrange(0, 300))
        if r < 0.9:
            return 0, b""
        return 3, self.payload(rng, rng.randrange(0, 64))

    def _websocket(self, rng: random.Random) -> None:
        for pf, binary, base64_ in (
            (False, self.ws_binary, self.ws_base64),
            (True, self.ws_pf_binary, self.ws_pf_base64),
        ):
            for _ in range(3000):
                channel, data = self._channel_payload(rng, pf)
                raw = bytes((channel,)) + data
                opcode = TEXT if rng.random() < 0.05 and raw.isascii() else BINARY
                binary.append(self._message(rng, opcode, raw))
                text = (chr(0x30 + channel % 80) + base64.b64encode(data).decode()).encode()
                if rng.random() < 0.05:
                    text = text[:-1] + b"!"  # invalid base64: dropped by the server
                base64_.append(self._message(rng, TEXT if rng.random() < 0.9 else BINARY, text))
            if not pf:  # v5 CLOSE signals: stdin (ends cat), resize, and malformed ones
                closes = [b"\xff\x00", b"\xff\x04", b"\xff\x02"]
                closes += [bytes((0xFF, rng.randrange(256))) for _ in range(12)]  # most fatal
                for close in closes:
                    binary.append((ws_frame(BINARY, close, key=self._key(rng)), 1))
        for _ in range(200):
            self.ws_control.append(
                ws_frame(
                    rng.choice((PINGOP, PONG)),
                    self.payload(rng, rng.randrange(0, 126)),
                    key=self._key(rng),
                )
            )
        k = b"\x01\x02\x03\x04"
        fatal = [
            ws_frame(BINARY, b"\xff\x09", key=k),  # v5 CLOSE for a channel that does not exist
            ws_frame(BINARY, b"\xff", key=k),  # v5 CLOSE of the wrong length
            ws_frame(BINARY, b"\xff\x00\x00", key=k),
            ws_frame(TEXT, b"\x00\xff\xfe invalid utf-8", key=k),
            ws_frame(BINARY, b"\x00unmasked", key=None),
            ws_frame(PINGOP, b"fragmented ping", fin=False, key=k),
            ws_frame(PINGOP, bytes(126), key=k),  # control frame over 125 bytes
            ws_frame(CLOSE, b"\x03", key=k),  # close with a 1-byte body
            ws_frame(CLOSE, struct.pack(">H", 999), key=k),
            ws_frame(CLOSE, struct.pack(">H", 1005), key=k),
            ws_frame(CLOSE, struct.pack(">H", 5000), key=k),
            ws_frame(CLOSE, struct.pack(">H", 1000) + b"\xff\xfe", key=k),
            ws_frame(CONT, b"\x00orphan continuation", key=k),
            ws_frame(BINARY, b"\x00start", fin=False, key=k) + ws_frame(BINARY, b"\x00x", key=k),
            ws_frame(BINARY, b"\x00", declared=(1 << 63) - 1, key=k),  # 64-bit length
            ws_frame(BINARY, b"\x00", declared=(1 << 64) - 1, key=k),  # MSB set: invalid
            ws_frame(BINARY, b"\x00", declared=1 << 40, key=k),
            ws_frame(BINARY, b"\x00" + bytes(100), declared=5 * MIB, key=k),  # > max message
            ws_frame(BINARY, b"\x00" * 10, declared=10, key=k)[:-4],  # truncated
            ws_frame(BINARY, b"\x00rsv", rsv=4, key=k),
            ws_frame(BINARY, b"\x00rsv1", rsv=1, key=k),
        ]
        for opcode in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF):
            fatal.append(ws_frame(opcode, b"\x00bad opcode", key=k))
        # a length of 126 and 127 with a non-minimal extended length
        fatal.append(bytes((0x82, 0x80 | 126)) + struct.pack(">H", 5) + k + xor_mask(b"\0abcd", k))
        fatal.append(bytes((0x82, 0x80 | 127)) + struct.pack(">Q", 5) + k + xor_mask(b"\0abcd", k))
        # many small fragments: a message of 2000 continuation frames
        frags = [ws_frame(BINARY, b"\x00", fin=False, key=k)]
        frags += [ws_frame(CONT, b"x", fin=False, key=k) for _ in range(2000)]
        frags.append(ws_frame(CONT, b"", key=k))
        fatal.append(b"".join(frags))
        self.ws_fatal = fatal

    # ---------------------------------------------------------------- HTTP garbage

    def _http(self, rng: random.Random) -> None:
        p = f"/api/v1/namespaces/default/pods/{POD}"
        auth = f"Authorization: Bearer {self.token}\r\n"
        host = "Host: 127.0.0.1\r\n"
        key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        ws = f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n{key}"
        spdy = "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
        texts = [
            f"GET /healthz HTTP/1.1\r\n{host}\r\n",
            f"GET /metrics HTTP/1.1\r\n{host}{auth}\r\n",
            f"GET /api/v1 HTTP/1.1\r\n{host}{auth}\r\n",
            f"GET / HTTP/9.9\r\n{host}\r\n",
            "GET /\r\n\r\n",
            f"GET / HTTP/1.1\r\n{host} folded: x\r\n\r\n",
            f"GET / HTTP/1.1\r\nHo st: x\r\n{host}\r\n",
            "CONNECT 127.0.0.1:22 HTTP/1.1\r\n\r\n",
            f"OPTIONS * HTTP/1.1\r\n{host}\r\n",
            f"GET http://evil.example/ HTTP/1.1\r\n{host}\r\n",
            f"TRACE / HTTP/1.1\r\n{host}\r\n",
            f"GET {p} HTTP/1.1\r\n{host}{auth}Accept: application/json;as=Table\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            f"GET / HTTP/1.1\r\n{host}Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
            f"POST /api/v1/namespaces/default/pods HTTP/1.1\r\n{host}{auth}"
            "Content-Type: application/json\r\nContent-Length: 9\r\n\r\n{garbage}",
            f"POST /api/v1/namespaces/default/pods HTTP/1.1\r\n{host}{auth}"
            "Transfer-Encoding: chunked\r\n\r\nzz\r\n",
            f"POST /api/v1/namespaces/default/pods HTTP/1.1\r\n{host}{auth}"
            "Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nx\r\n",
            f"POST /api/v1/namespaces/default/pods HTTP/1.1\r\n{host}{auth}"
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            f"POST /api/v1/namespaces/default/pods HTTP/1.1\r\n{host}{auth}"
            "Content-Length: 99999999999999999999999\r\n\r\n",
            f"POST /api/v1/namespaces/default/pods HTTP/1.1\r\n{host}{auth}"
            "Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            f"POST /api/v1/namespaces/default/pods HTTP/1.1\r\n{host}{auth}"
            "Content-Type: application/yaml\r\nContent-Length: 12\r\n\r\n[[[[[[[[[[[[",
            f"GET {p}/exec?command=cat HTTP/1.1\r\n{host}{auth}{ws}"
            "Sec-WebSocket-Version: 8\r\n\r\n",
            f"GET {p}/exec?command=cat&stdout=1 HTTP/1.1\r\n{host}{auth}Upgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",  # no key
            f"GET {p}/exec?command=cat&stdout=1 HTTP/1.1\r\n{host}{auth}Upgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: abc\r\n\r\n",
            f"POST {p}/exec?command=cat&stdout=1 HTTP/1.1\r\n{host}{auth}{spdy}\r\n",
            f"POST {p}/exec?command=cat&stdout=1 HTTP/1.1\r\n{host}{auth}{spdy}"
            "X-Stream-Protocol-Version: v9.channel.k8s.io\r\n\r\n",
            f"POST {p}/exec?command=cat&stdout=1 HTTP/1.1\r\n{host}{auth}Connection: keep-alive\r\n"
            "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n",
            f"POST {p}/exec HTTP/1.1\r\n{host}{auth}{spdy}"
            "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n",  # no command
            f"POST {p}/exec?command=cat&tty=1&stderr=1&container=main HTTP/1.1\r\n{host}{auth}"
            f"{spdy}X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n",
            f"POST {p}/exec?command=cat&stdout=1&container=nope HTTP/1.1\r\n{host}{auth}{spdy}"
            "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n",
            f"POST /api/v1/namespaces/default/pods/nope/exec?command=cat&stdout=1 HTTP/1.1\r\n"
            f"{host}{auth}{spdy}X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n",
            f"GET {p}/portforward?ports=0 HTTP/1.1\r\n{host}{auth}{ws}"
            "Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n",
            f"GET {p}/portforward?ports=abc HTTP/1.1\r\n{host}{auth}{ws}"
            "Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n",
            f"GET {p}/portforward?ports={','.join(['1'] * 101)} HTTP/1.1\r\n{host}{auth}{ws}"
            "Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n",
            f"GET {p}/portforward HTTP/1.1\r\n{host}{auth}{ws}"
            "Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n",
            f"GET {p}/exec?command=cat&stdout=1 HTTP/1.1\r\n{host}{auth}{ws}"
            f"Sec-WebSocket-Protocol: {', '.join(['x'] * 500)}\r\n\r\n",
            f"GET {p}/exec?command=cat&stdout=1 HTTP/1.1\r\n{host}{auth}{ws}"
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            "Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n",
            f"GET {p}/exec?{'&'.join(['command=x'] * 1500)} HTTP/1.1\r\n{host}{auth}\r\n",
            f"GET /exec/{'A' * 60} HTTP/1.1\r\n{host}\r\n",
            f"GET /portforward/abc HTTP/1.1\r\n{host}{spdy}"
            "X-Stream-Protocol-Version: portforward.k8s.io\r\n\r\n",
            f"GET {p}/exec?command=%ff%fe&stdout=%zz HTTP/1.1\r\n{host}{auth}\r\n",
        ]
        blobs = [t.encode() for t in texts]
        blobs += [
            b"GET " + b"/a" * 5000 + b" HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"\r\n",
            b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
            b"GET / HTTP/1.1\r\nHo\x00st: x\r\n\r\n",
            b"\x00\x01\x02 / HTTP/1.1\r\n\r\n",
            b"\r\n" * 2000,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 50,  # pipelined
            b"GET / HTTP/1.1\r\nHost: x\r\n",  # an unfinished head
            b"G",
            b"GET /healthz HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nAuthorization: Bearer \xff\xfe\r\n\r\n",
        ]
        for _ in range(60):
            blobs.append(self.payload(rng, rng.randrange(1, 3000)))
        self.http_garbage = blobs
        self.tls_garbage = [
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",  # a truncated ClientHello
            b"\x16\x03\x01\xff\xff" + bytes(100),  # a record that claims 64 KiB
            b"\x15\x03\x03\x00\x02\x02\x28",  # an alert first
            b"\x80\x2e\x01\x00\x02\x00\x15",  # an SSLv2 hello
        ] + [self.payload(rng, rng.randrange(1, 2000)) for _ in range(20)]


# ----------------------------------------------------------------------------- mutations

SPDY_OPS = (
    "bitflip", "length", "truncate", "duplicate", "swap", "garbage", "unknown_type",
    "version", "flags", "huge", "fatal_block", "zero_stream", "rst0", "ping0", "goaway",
    "corrupt_block",
)  # fmt: skip
WS_OPS = (
    "bitflip", "truncate", "duplicate", "swap", "garbage", "fatal", "unmask", "opcode",
    "rsv", "length64",
)  # fmt: skip


def bitflip(rng: random.Random, frame: bytes) -> bytes:
    if not frame:
        return frame
    b = bytearray(frame)
    for _ in range(rng.randrange(1, 4)):
        pos = rng.randrange(min(len(b), 16)) if rng.random() < 0.7 else rng.randrange(len(b))
        b[pos] ^= 1 << rng.randrange(8)
    return bytes(b)


def mutate_any(rng: random.Random, op: str, frame: bytes, mat: Material) -> list[bytes] | None:
    """The mutations both framings share; None for an op that is not one of them."""
    if op == "bitflip":
        return [bitflip(rng, frame)]
    if op == "truncate":
        return [frame[: rng.randrange(len(frame))]] if frame else [frame]
    if op == "duplicate":
        return [frame, frame]
    if op == "garbage":
        return [frame, mat.payload(rng, rng.randrange(1, 64))]
    return None


def mutate_spdy(rng: random.Random, op: str, frame: bytes, mat: Material) -> list[bytes]:
    if (shared := mutate_any(rng, op, frame, mat)) is not None:
        return shared
    if op == "length" and len(frame) >= 8:
        value = rng.choice((0, len(frame) - 7, max(0, len(frame) - 9), 0xFFFFFF))
        value = value if rng.random() < 0.7 else rng.randrange(0x1000000)
        return [frame[:5] + (value & 0xFFFFFF).to_bytes(3, "big") + frame[8:]]
    if op == "unknown_type":
        kind = rng.choice((0, 5, 10, 11, 12, 0x7FFF, 0xFFFF))
        return [ctrl(kind, mat.payload(rng, rng.randrange(0, 32)))]
    if op == "version" and frame[:1] and frame[0] & 0x80:
        version = rng.choice((0, 1, 2, 4, 0x7FFF))
        return [(0x8000 | version).to_bytes(2, "big") + frame[2:]]
    if op == "flags" and len(frame) >= 8:
        return [frame[:4] + bytes((rng.randrange(256),)) + frame[5:]]
    if op == "huge":  # a frame that declares more than max_frame_size (1 MiB)
        length = rng.choice((MIB + 1, 0xFFFFFF))
        if rng.random() < 0.5:
            return [_DATA.pack(1, length) + mat.payload(rng, 100)]
        return [_CTRL.pack(0x8003, SYN_STREAM, length) + mat.payload(rng, 100)]
    if op == "fatal_block":
        block = rng.choice(mat.fatal_blocks)
        return [syn_stream(0x7FFFFFF1, ZLIB_PREFIX + block.spliced)]
    if op == "zero_stream":
        return [data_frame(0, b"x") if rng.random() < 0.5 else ctrl(RST_STREAM, _TWO.pack(0, 5))]
    if op == "rst0":
        return [ctrl(RST_STREAM, _TWO.pack(rng.randrange(1, 50), 0))]
    if op == "ping0":
        return [ctrl(PING, _U32.pack(0))]
    if op == "goaway":
        return [ctrl(GOAWAY, _TWO.pack(0, rng.choice((0, 1, 2, 99))))]
    if op == "corrupt_block":  # a SYN_STREAM whose compressed block does not inflate
        return [syn_stream(0x7FFFFFF3, mat.payload(rng, rng.randrange(1, 200)))]
    return [frame]


def mutate_ws(rng: random.Random, op: str, frame: bytes, mat: Material) -> list[bytes]:
    if (shared := mutate_any(rng, op, frame, mat)) is not None:
        return shared
    if op == "fatal":
        return [rng.choice(mat.ws_fatal)]
    if op == "unmask" and len(frame) >= 2:
        return [frame[:1] + bytes((frame[1] & 0x7F,)) + frame[2:]]
    if op == "opcode" and frame:
        return [bytes(((frame[0] & 0xF0) | rng.randrange(16),)) + frame[1:]]
    if op == "rsv" and frame:
        return [bytes((frame[0] | (rng.randrange(1, 8) << 4),)) + frame[1:]]
    if op == "length64" and len(frame) >= 2:
        declared = rng.choice((1 << 62, (1 << 63) - 1, 5 * MIB, 0xFFFF + 1))
        return [ws_frame(BINARY, frame[2:20], declared=declared)]
    return [frame]


def apply_mutations(
    rng: random.Random,
    frames: list[bytes],
    rate: float,
    ops: Sequence[str],
    mutate: Callable[[random.Random, str, bytes, Material], list[bytes]],
    mat: Material,
    used: Counter[str],
) -> list[bytes]:
    if rate <= 0:
        return frames
    out: list[bytes] = []
    i, n = 0, len(frames)
    while i < n:
        frame = frames[i]
        if rng.random() < rate:
            op = rng.choice(ops)
            used[op] += 1
            if op == "swap":
                if i + 1 < n:
                    out += [frames[i + 1], frame]
                    i += 2
                    continue
                out.append(frame)
            else:
                out.extend(mutate(rng, op, frame, mat))
        else:
            out.append(frame)
        i += 1
    return out


# ----------------------------------------------------------------------------- plans


@dataclass
class Plan:
    """One fuzz connection: what to send and how."""

    index: int
    scenario: str
    token_kind: str  # valid, wrong, none
    head: bytes  # the HTTP request head ("" for garbage scenarios)
    frames: list[bytes]
    reader: str  # spdy, ws, tunnel, http, raw
    tls: bool = True
    pipelined: bool = False  # frames go out with the head, without waiting for the answer
    on_refusal_send: bool = False  # send the frames after a non-101 answer too
    ending: str = "close"  # close, abort, linger
    linger: float = 0.0
    tunnel_chunks: list[int] = field(default_factory=list)  # WebSocket message sizes
    mutations: Counter[str] = field(default_factory=Counter)


def _token(rng: random.Random, mat: Material) -> tuple[str, str]:
    r = rng.random()
    if r < 0.86:
        return "valid", f"Authorization: Bearer {mat.token}\r\n"
    if r < 0.96:
        return "wrong", f"Authorization: Bearer {rng.randbytes(16).hex()}\r\n"
    return "none", ""


def _query(params: list[tuple[str, str | None]]) -> str:
    from urllib.parse import quote

    return "&".join(f"{k}={quote(v)}" for k, v in params if v is not None)


def _exec_target(rng: random.Random, attach: bool) -> tuple[str, dict[str, bool]]:
    """The path and query of an exec or attach, and which streams it asks for."""
    p = f"/api/v1/namespaces/default/pods/{POD if rng.random() < 0.98 else 'nope'}"
    params: list[tuple[str, str | None]] = []
    if not attach:
        r = rng.random()
        if r < 0.75:
            cmd = ["cat"]
        elif r < 0.83:
            cmd = ["true"]
        elif r < 0.88:
            cmd = ["sh", "-c", "head -c 1000 /dev/zero; cat >/dev/null"]
        elif r < 0.92:
            cmd = ["/nonexistent/command"]
        elif r < 0.95:
            cmd = []
        else:
            cmd = ["sleep", "1"]
        params += [("command", c) for c in cmd]
    tty = rng.random() < 0.1
    streams = {
        "stdin": rng.random() < 0.85,
        "stdout": rng.random() < 0.9,
        "stderr": rng.random() < 0.6 and not (tty and rng.random() < 0.9),
        "tty": tty,
    }
    for name, on in streams.items():
        if on:
            params.append((name, rng.choice(("true", "1", "True"))))
        elif rng.random() < 0.5:
            params.append((name, rng.choice(("false", "0"))))
    r = rng.random()
    container = ("attach" if attach else "main") if r < 0.93 else ("nope" if r < 0.97 else None)
    params.append(("container", container))
    rng.shuffle(params)
    return f"{p}/{'attach' if attach else 'exec'}?{_query(params)}", streams


# --- SPDY sessions -------------------------------------------------------------------------


class SpdyBuilder:
    """The frames of one SPDY connection (exec, attach or port-forward), before mutations."""

    def __init__(self, rng: random.Random, mat: Material, real_zlib: bool) -> None:
        self.rng = rng
        self.mat = mat
        self.headers = HeaderStream(real_zlib)
        self.frames: list[bytes] = []
        self.next_sid = 1
        self.open: list[int] = []

    def syn(self, block: Block, sid: int | None = None, flags: int = 0) -> int:
        if sid is None:
            sid = self.next_sid
            self.next_sid += 2
        rng = self.rng
        prio = rng.randrange(8) if rng.random() < 0.1 else 0
        slot = rng.randrange(256) if rng.random() < 0.05 else 0
        self.frames.append(syn_stream(sid, self.headers.compress(block), flags, prio, slot))
        self.open.append(sid)
        return sid

    def common(self, action: str) -> None:
        """Actions any SPDY session can take."""
        rng, mat, frames = self.rng, self.mat, self.frames
        if action == "ping":
            frames.append(ctrl(PING, _U32.pack(rng.randrange(1, 1 << 32))))
        elif action == "settings":
            n = rng.randrange(0, 6)
            body = _U32.pack(n) + b"".join(
                _TWO.pack(rng.randrange(1 << 32), rng.randrange(1 << 32)) for _ in range(n)
            )
            frames.append(ctrl(SETTINGS, body, flags=rng.choice((0, 0, 1))))
        elif action == "window":
            sid = rng.choice(self.open) if self.open and rng.random() < 0.7 else 0
            frames.append(ctrl(WINDOW_UPDATE, _TWO.pack(sid, rng.randrange(1, 1 << 31))))
        elif action == "data_unknown":
            sid = rng.choice((rng.randrange(1, 1 << 31), self.next_sid, self.next_sid + 1))
            payload = mat.payload(rng, mat.payload_size(rng))
            frames.append(data_frame(sid, payload, flags=rng.choice((0, 0, 0, 1))))
        elif action == "data_open" and self.open:
            sid = rng.choice(self.open)
            frames.append(data_frame(sid, mat.payload(rng, mat.payload_size(rng))))
        elif action == "fin_open" and self.open:
            frames.append(data_frame(rng.choice(self.open), b"", flags=1))
        elif action == "rst":
            sid = (
                rng.choice(self.open) if self.open and rng.random() < 0.7 else rng.randrange(1, 99)
            )
            frames.append(ctrl(RST_STREAM, _TWO.pack(sid, rng.randrange(1, 12))))
            if sid in self.open and rng.random() < 0.5:
                self.open.remove(sid)
        elif action == "syn_junk":
            self.syn(rng.choice(mat.junk_blocks), flags=rng.choice((0, 0, 0, 1, 2)))
        elif action == "syn_old" and self.next_sid > 1:
            self.syn(mat.exec_blocks["stdin"], sid=rng.randrange(1, self.next_sid, 2))
        elif action == "syn_even":
            self.syn(mat.exec_blocks["stdout"], sid=self.next_sid + 1)
            self.next_sid += 2
        elif action == "syn_huge":
            self.syn(mat.exec_blocks["stdout"], sid=rng.choice((0x80000001, 0xFFFFFFFF)))
        elif action == "syn_burst":  # many streams: past max_streams (256)
            for _ in range(rng.randrange(20, 300)):
                self.syn(mat.exec_blocks[rng.choice(("stdout", "resize", "data"))])
        elif action == "headers" and self.open:
            block = rng.choice((mat.exec_blocks["stdin"], rng.choice(mat.junk_blocks)))
            body = _U32.pack(rng.choice(self.open)) + self.headers.compress(block)
            frames.append(ctrl(HEADERS, body, flags=rng.choice((0, 1))))
        elif action == "syn_reply":
            sid = rng.choice(self.open) if self.open else 2
            body = _U32.pack(sid) + self.headers.compress(mat.exec_blocks["error"])
            frames.append(ctrl(SYN_REPLY, body))
        elif action == "version":  # an unchecked version on a harmless frame
            frames.append(ctrl(PING, _U32.pack(2), version=rng.choice((1, 2, 4, 0x7FFF))))
        else:  # an action that did not apply: a ping
            frames.append(ctrl(PING, _U32.pack(rng.randrange(1, 1 << 32) | 1)))


COMMON_WEIGHTS: dict[str, float] = {
    "ping": 8, "settings": 3, "window": 3, "data_unknown": 10, "data_open": 6, "fin_open": 1,
    "rst": 3, "syn_junk": 6, "syn_old": 2, "syn_even": 1, "syn_huge": 1, "syn_burst": 0.3,
    "headers": 3, "syn_reply": 2, "version": 2,
}  # fmt: skip


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def spdy_exec_frames(
    rng: random.Random, mat: Material, streams: dict[str, bool], version: int, n: int
) -> list[bytes]:
    b = SpdyBuilder(rng, mat, real_zlib=rng.random() < 0.15)
    sids: dict[str, int] = {}
    wanted = ["error"] + [k for k in ("stdin", "stdout", "stderr") if streams[k]]
    if streams["tty"] and version >= 3:
        wanted.append("resize")
    # kubectl's order (the command starts), or some of them in any order
    chosen = rng.random() < 0.8
    order = wanted if chosen else rng.sample(wanted, rng.randrange(len(wanted) + 1))
    for kind in order:
        sids[kind] = b.syn(mat.exec_blocks[kind])
    weights = dict(COMMON_WEIGHTS, stdin=30, resize=5, stdin_fin=0.5)
    while len(b.frames) < n:
        action = _pick(rng, weights)
        if action == "stdin" and "stdin" in sids:
            b.frames.append(data_frame(sids["stdin"], mat.payload(rng, mat.payload_size(rng))))
        elif action == "resize":
            sid = sids.get("resize", sids.get("stdin", 1))
            b.frames.append(data_frame(sid, rng.choice(RESIZE_PAYLOADS)))
        elif action == "stdin_fin" and "stdin" in sids:
            b.frames.append(data_frame(sids["stdin"], b"", flags=1))
        else:
            b.common(action)
    return b.frames


def spdy_portforward_frames(rng: random.Random, mat: Material, n: int) -> list[bytes]:
    b = SpdyBuilder(rng, mat, real_zlib=rng.random() < 0.15)
    pairs: list[tuple[int, int]] = []
    rid = 0
    weights = dict(COMMON_WEIGHTS, pair=8, pf_data=25, pf_fin=2, pf_rst=2, half_pair=1)
    while len(b.frames) < n:
        action = _pick(rng, weights)
        if action in ("pair", "half_pair"):
            port = rng.choice(mat.pf_ports)
            with_rid = rng.random() < 0.97
            r = rid if rng.random() < 0.95 else rng.randrange(rid + 1)  # sometimes a reused id
            rid += 1
            err = b.syn(mat.pf_block(b"error", port, r, with_rid), flags=rng.choice((0, 1, 1)))
            if action == "pair":
                kind = b"data" if rng.random() < 0.97 else rng.choice((b"error", b"junk"))
                pairs.append((err, b.syn(mat.pf_block(kind, port, r, with_rid))))
        elif action == "pf_data" and pairs:
            _, data = rng.choice(pairs)
            b.frames.append(data_frame(data, mat.payload(rng, mat.payload_size(rng))))
        elif action in ("pf_fin", "pf_rst") and pairs:
            pair = rng.choice(pairs)
            sid = pair[1] if rng.random() < 0.8 else pair[0]
            if action == "pf_fin":
                b.frames.append(data_frame(sid, b"", flags=1))
            else:
                b.frames.append(ctrl(RST_STREAM, _TWO.pack(sid, rng.choice((1, 5)))))
                pairs.remove(pair)
        else:
            b.common(action)
    return b.frames


# --- WebSocket sessions --------------------------------------------------------------------

EXEC_OFFERS: list[tuple[float, list[str]]] = [
    (35, ["v5.channel.k8s.io"]),
    (15, ["v4.channel.k8s.io"]),
    (10, ["v4.base64.channel.k8s.io"]),
    (8, ["channel.k8s.io"]),
    (8, ["base64.channel.k8s.io"]),
    (8, []),
    (6, ["v5.channel.k8s.io", "v4.channel.k8s.io"]),
    (5, ["bogus.k8s.io"]),
    (5, ["SPDY/3.1+portforward.k8s.io"]),
]
PF_OFFERS: list[tuple[float, list[str]]] = [
    (35, ["v4.channel.k8s.io"]),
    (10, ["v4.base64.channel.k8s.io"]),
    (40, ["SPDY/3.1+portforward.k8s.io"]),
    (5, []),
    (5, ["v5.channel.k8s.io", "v4.channel.k8s.io"]),
    (5, ["bogus.k8s.io"]),
]


def _offer(rng: random.Random, offers: list[tuple[float, list[str]]]) -> list[str]:
    return rng.choices([o for _, o in offers], weights=[w for w, _ in offers])[0]


def ws_session_frames(
    rng: random.Random, mat: Material, pool: list[tuple[bytes, int]], n: int
) -> list[bytes]:
    frames: list[bytes] = []
    while len(frames) < n:
        r = rng.random()
        if r < 0.9:
            blob, count = rng.choice(pool)
            if count == 1:
                frames.append(blob)
            else:  # a fragmented message: its frames stay together and count one by one
                frames.append(blob)
                frames.extend(b"" for _ in range(count - 1))
        else:
            frames.append(rng.choice(mat.ws_control))
    return frames


def _ws_head(rng: random.Random, path: str, token: str, offer: list[str]) -> bytes:
    key = base64.b64encode(rng.randbytes(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        "User-Agent: streamsrv-fuzz",
    ]
    if offer:
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(offer)}")
    return ("\r\n".join(lines) + "\r\n" + token + "\r\n").encode()


def _spdy_head(path: str, token: str, protocols: list[str], method: str = "POST") -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Connection: Upgrade",
        "Upgrade: SPDY/3.1",
        "User-Agent: streamsrv-fuzz",
    ]
    lines += [f"X-Stream-Protocol-Version: {p}" for p in protocols]
    return ("\r\n".join(lines) + "\r\n" + token + "\r\n").encode()


SCENARIOS: dict[str, float] = {
    "spdy-exec": 22, "spdy-attach": 5, "spdy-portforward": 18, "ws-exec": 20, "ws-attach": 5,
    "ws-portforward": 9, "ws-tunnel": 10, "http-garbage": 8, "tls-garbage": 3,
}  # fmt: skip
SPDY_EXEC_PROTOCOLS = {
    "v5.channel.k8s.io": 5, "v4.channel.k8s.io": 4, "v3.channel.k8s.io": 3,
    "v2.channel.k8s.io": 2, "channel.k8s.io": 1,
}  # fmt: skip


def _frame_count(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.3:
        return rng.randrange(1, 30)
    if r < 0.85:
        return rng.randrange(30, 300)
    return rng.randrange(300, 1500)


def make_plan(index: int, seed: int, mat: Material, scenario: str | None = None) -> Plan:
    """The connection ``index`` of a run with ``seed``: the same every time."""
    rng = random.Random(f"conn:{seed}:{index}")
    scenario = scenario or _pick(rng, SCENARIOS)
    token_kind, token = _token(rng, mat)
    rate = rng.choice((0.0, 0.0, 0.002, 0.01, 0.01, 0.03, 0.1))
    n = _frame_count(rng)
    mutations: Counter[str] = Counter()
    ending = rng.choice(("close", "close", "abort", "linger"))
    linger = rng.choice((0.0, 0.05, 0.2, 1.0))
    pipelined = rng.random() < 0.05
    refusal_send = rng.random() < 0.5

    if scenario in ("spdy-exec", "spdy-attach"):
        path, streams = _exec_target(rng, attach=scenario == "spdy-attach")
        protocols = rng.choice(
            (["v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"],
             ["v5.channel.k8s.io", "v4.channel.k8s.io"], ["v4.channel.k8s.io"],
             ["channel.k8s.io"], ["v2.channel.k8s.io"], ["v9.channel.k8s.io"], [])
        )  # fmt: skip
        version = next((SPDY_EXEC_PROTOCOLS[p] for p in protocols if p in SPDY_EXEC_PROTOCOLS), 4)
        head = _spdy_head(path, token, protocols, "POST" if rng.random() < 0.9 else "GET")
        frames = spdy_exec_frames(rng, mat, streams, version, n)
        frames = apply_mutations(rng, frames, rate, SPDY_OPS, mutate_spdy, mat, mutations)
        if rng.random() < 0.1:
            frames.append(ctrl(GOAWAY, _TWO.pack(0, 0)))
        return Plan(index, scenario, token_kind, head, frames, "spdy", pipelined=pipelined,
                    on_refusal_send=refusal_send, ending=ending, linger=linger,
                    mutations=mutations)  # fmt: skip
    if scenario == "spdy-portforward":
        protocols = rng.choice((["portforward.k8s.io"],) * 9 + (["portforward.k8s.io.bad"],))
        path = f"/api/v1/namespaces/default/pods/{POD}/portforward"
        head = _spdy_head(path, token, protocols)
        frames = spdy_portforward_frames(rng, mat, n)
        frames = apply_mutations(rng, frames, rate, SPDY_OPS, mutate_spdy, mat, mutations)
        if rng.random() < 0.1:
            frames.append(ctrl(GOAWAY, _TWO.pack(0, 0)))
        return Plan(index, scenario, token_kind, head, frames, "spdy", pipelined=pipelined,
                    on_refusal_send=refusal_send, ending=ending, linger=linger,
                    mutations=mutations)  # fmt: skip
    if scenario in ("ws-exec", "ws-attach"):
        path, _ = _exec_target(rng, attach=scenario == "ws-attach")
        offer = _offer(rng, EXEC_OFFERS)
        base64_ = bool(offer) and "base64" in offer[0]
        pool = mat.ws_base64 if base64_ else mat.ws_binary
        frames = ws_session_frames(rng, mat, pool, n)
        frames = apply_mutations(rng, frames, rate, WS_OPS, mutate_ws, mat, mutations)
        if rng.random() < 0.3:
            frames.append(ws_frame(CLOSE, struct.pack(">H", 1000) + b"bye", key=b"abcd"))
        return Plan(index, scenario, token_kind, _ws_head(rng, path, token, offer), frames, "ws",
                    pipelined=pipelined, on_refusal_send=refusal_send, ending=ending,
                    linger=linger, mutations=mutations)  # fmt: skip
    if scenario in ("ws-portforward", "ws-tunnel"):
        p = f"/api/v1/namespaces/default/pods/{POD}/portforward"
        if scenario == "ws-tunnel":
            offer = ["SPDY/3.1+portforward.k8s.io"]
            if rng.random() < 0.1:
                offer = _offer(rng, PF_OFFERS)
            head = _ws_head(rng, p, token, offer)
            frames = spdy_portforward_frames(rng, mat, n)
            frames = apply_mutations(rng, frames, rate, SPDY_OPS, mutate_spdy, mat, mutations)
            chunks = [rng.choice((0, 1, 2, 4, 8, 64, 1024, 16384, 65536)) for _ in range(64)]
            return Plan(index, scenario, token_kind, head, frames, "tunnel",
                        pipelined=pipelined, on_refusal_send=refusal_send, ending=ending,
                        linger=linger, tunnel_chunks=chunks,
                        mutations=mutations)  # fmt: skip
        offer = _offer(rng, PF_OFFERS)
        r = rng.random()
        echo, closed = mat.echo_port, mat.closed_port
        ports = (
            f"{echo}" if r < 0.7 else f"{echo},{closed}" if r < 0.85 else f"{echo},{echo}"
            if r < 0.95 else rng.choice(("0", "abc", "", "70000", f"{echo},"))
        )  # fmt: skip
        base64_ = bool(offer) and "base64" in offer[0]
        pool = mat.ws_pf_base64 if base64_ else mat.ws_pf_binary
        frames = ws_session_frames(rng, mat, pool, n)
        frames = apply_mutations(rng, frames, rate, WS_OPS, mutate_ws, mat, mutations)
        head = _ws_head(rng, f"{p}?ports={ports}", token, offer)
        return Plan(index, scenario, token_kind, head, frames, "ws", pipelined=pipelined,
                    on_refusal_send=refusal_send, ending=ending, linger=linger,
                    mutations=mutations)  # fmt: skip
    if scenario == "http-garbage":
        frames = [rng.choice(mat.http_garbage) for _ in range(rng.randrange(1, 12))]
        if rng.random() < 0.3:  # garbage, then a real upgrade request
            frames.append(_ws_head(rng, f"/api/v1/namespaces/default/pods/{POD}/exec?"
                                        "command=true&stdout=1&container=main", token,
                                   ["v5.channel.k8s.io"]))  # fmt: skip
        return Plan(index, scenario, token_kind, b"", frames, "http", ending=ending,
                    linger=max(linger, 0.2))  # fmt: skip
    # tls-garbage: plain bytes on the TLS port
    frames = [rng.choice(mat.tls_garbage) for _ in range(rng.randrange(1, 4))]
    return Plan(index, "tls-garbage", "none", b"", frames, "raw", tls=False, ending="close",
                linger=0.2)  # fmt: skip


# ----------------------------------------------------------------------------- reading replies


class SpdyScan:
    """Counts what a server sends on SPDY: GOAWAY status, RST_STREAM statuses, frames."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.skip = 0
        self.goaway: int | None = None
        self.rst: Counter[int] = Counter()
        self.frames = 0

    def feed(self, data: bytes) -> None:
        buf = self.buf
        if self.skip:
            if len(data) <= self.skip:
                self.skip -= len(data)
                return
            data = data[self.skip :]
            self.skip = 0
        buf += data
        pos, n = 0, len(buf)
        while n - pos >= 8:
            w0, w1 = _TWO.unpack_from(buf, pos)
            length = w1 & 0xFFFFFF
            if w0 & 0x80000000:
                if n - pos < 8 + length:
                    break
                kind = w0 & 0xFFFF
                if kind == GOAWAY and length >= 8:
                    self.goaway = _TWO.unpack_from(buf, pos + 8)[1]
                elif kind == RST_STREAM and length >= 8:
                    self.rst[_TWO.unpack_from(buf, pos + 8)[1]] += 1
                pos += 8 + length
            else:
                end = pos + 8 + length
                if end > n:
                    self.skip = end - n
                    pos = n
                else:
                    pos = end
            self.frames += 1
        del buf[:pos]


class WsScan:
    """Reads a server's WebSocket frames: close code, message count, and (for the tunnel) the
    SPDY byte stream inside binary messages."""

    def __init__(self, inner: SpdyScan | None) -> None:
        self.buf = bytearray()
        self.inner = inner
        self.close_code: int | None = None
        self.messages = 0

    def feed(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = struct.unpack_from(">H", buf, pos + 2)[0]
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = struct.unpack_from(">Q", buf, pos + 2)[0]
                head = 10
            if b1 & 0x80:
                head += 4  # a server must not mask, but read past it if it does
            if n - pos < head + length:
                break
            opcode = b0 & 0xF
            payload = buf[pos + head : pos + head + length]
            if opcode == CLOSE:
                self.close_code = struct.unpack(">H", payload[:2])[0] if length >= 2 else 1005
            elif opcode in (BINARY, CONT) and self.inner is not None:
                self.inner.feed(bytes(payload))
            self.messages += 1
            pos += head + length
        del buf[:pos]


STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


@dataclass
class ConnResult:
    scenario: str
    token_kind: str
    ending: str
    sent: int
    planned: int
    bytes_out: int = 0
    bytes_in: int = 0
    status: int | None = None
    rst: Counter[int] = field(default_factory=Counter)
    http_statuses: list[int] = field(default_factory=list)
    mutations: Counter[str] = field(default_factory=Counter)


class Conversation:
    """Reads everything the server sends on one fuzz connection, concurrently with writing."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.head = bytearray()
        self.status: int | None = None
        self.head_done = asyncio.Event()
        self.eof = asyncio.Event()
        self.error: str | None = None
        self.spdy: SpdyScan | None = None
        self.ws: WsScan | None = None
        self.http_tail = bytearray()
        self.http_statuses: list[int] = []
        self.bytes_in = 0

    def feed(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.kind == "raw":
            return
        if self.status is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 65536:
                    self.status = 0
                    self.head_done.set()
                return
            m = STATUS_LINE.match(self.head)
            self.status = int(m.group(1)) if m else 0
            self.http_statuses.append(self.status)
            rest = bytes(self.head[end + 4 :])
            self.head_done.set()
            if self.status == 101 and self.kind != "http":
                if self.kind == "spdy":
                    self.spdy = SpdyScan()
                else:
                    self.ws = WsScan(SpdyScan() if self.kind == "tunnel" else None)
            data = rest
            if not data:
                return
        if self.spdy is not None:
            self.spdy.feed(data)
        elif self.ws is not None:
            self.ws.feed(data)
        else:  # plain HTTP: count the answers (good enough for statistics)
            self.http_tail += data
            for m in STATUS_LINE.finditer(self.http_tail):
                self.http_statuses.append(int(m.group(1)))
            del self.http_tail[: max(0, len(self.http_tail) - 16)]

    async def pump(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                self.feed(data)
        except (ConnectionError, OSError, ssl.SSLError) as exc:
            self.error = type(exc).__name__
        finally:
            self.eof.set()
            self.head_done.set()

    def ending(self) -> str:
        """How the server ended (or answered) this connection."""
        if self.status is not None and self.status not in (0, 101):
            return f"http-{self.status}"
        if self.status == 0:
            return "http-garbled"
        if self.spdy is not None and self.spdy.goaway is not None:
            return f"goaway-{self.spdy.goaway}"
        if self.ws is not None:
            inner = self.ws.inner
            if inner is not None and inner.goaway is not None:
                return f"tunnel-goaway-{inner.goaway}"
            if self.ws.close_code is not None:
                return f"ws-close-{self.ws.close_code}"
        if self.eof.is_set():
            return "reset" if self.error else "server-closed"
        return "open"


@dataclass
class Budget:
    """Frames still to send, shared by the workers; unsent reservations come back."""

    remaining: int
    deadline: float
    sent: int = 0
    inflight: int = 0
    next_index: int = 0
    done: bool = False
    connect_failures: int = 0


async def _write_all(
    writer: asyncio.StreamWriter,
    chunks: list[tuple[bytes, int]],
    budget: Budget,
    result: ConnResult,
    conv: Conversation,
) -> str | None:
    """Write ``chunks`` (bytes, frames in them); None when all went out, else why not."""
    for blob, count in chunks:
        if time.monotonic() >= budget.deadline:
            return "time-limit"
        if conv.eof.is_set():  # the server is gone: what would be sent is lost
            return "reset" if conv.error else "server-closed"
        try:
            writer.write(blob)
            await asyncio.wait_for(writer.drain(), STALL_TIMEOUT)
        except TimeoutError:
            return "stalled"
        except (ConnectionError, OSError, ssl.SSLError, RuntimeError):
            return "reset"
        result.sent += count
        budget.sent += count
        result.bytes_out += len(blob)
    return None


def _batches(frames: list[bytes], size: int = 64 * 1024) -> list[tuple[bytes, int]]:
    out: list[tuple[bytes, int]] = []
    cur: list[bytes] = []
    cur_len = 0
    for f in frames:
        cur.append(f)
        cur_len += len(f)
        if cur_len >= size:
            out.append((b"".join(cur), len(cur)))
            cur, cur_len = [], 0
    if cur:
        out.append((b"".join(cur), len(cur)))
    return out


def _tunnel_batches(
    rng: random.Random, frames: list[bytes], sizes: list[int], size: int = 64 * 1024
) -> list[tuple[bytes, int]]:
    """SPDY frames cut at arbitrary points into binary WebSocket messages (§5b): a frame is
    counted in the batch where its last byte goes out."""
    out: list[tuple[bytes, int]] = []
    stream = bytearray()
    ends: list[int] = []
    for f in frames:
        stream += f
        ends.append(len(stream))
    pos, i, k = 0, 0, 0
    cur: list[bytes] = []
    cur_len = 0
    while pos < len(stream):
        step = sizes[k % len(sizes)] or 0
        k += 1
        piece = bytes(stream[pos : pos + max(step, 1)]) if step else b""
        key = b"\0\0\0\0" if rng.random() < 0.5 else rng.randbytes(4)
        msg = ws_frame(BINARY, piece, key=key)
        pos += len(piece)
        cur.append(msg)
        cur_len += len(msg)
        if cur_len >= size or pos >= len(stream):
            count = 0
            while i < len(ends) and ends[i] <= pos:
                i += 1
                count += 1
            out.append((b"".join(cur), count))
            cur, cur_len = [], 0
    return out


def _abort_if_connected(
    task: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result()[1].transport.abort()


async def run_connection(
    plan: Plan, host: str, port: int, ctx: ssl.SSLContext, budget: Budget
) -> ConnResult:
    result = ConnResult(
        plan.scenario, plan.token_kind, "", 0, len(plan.frames), mutations=plan.mutations
    )
    conv = Conversation(plan.reader)
    # Not asyncio.wait_for: on Python 3.11 a connect that completes just as the time runs out
    # is dropped unclosed (CI saw its socket reported as a ResourceWarning at teardown). A
    # connection this call does not hand on is aborted, whenever its connect ends.
    connecting = asyncio.ensure_future(
        asyncio.open_connection(
            host,
            port,
            ssl=ctx if plan.tls else None,
            server_hostname=host if plan.tls else None,
            limit=256 * 1024,
        )
    )
    try:
        done, _ = await asyncio.wait({connecting}, timeout=CONNECT_TIMEOUT)
    except BaseException:
        connecting.cancel()
        connecting.add_done_callback(_abort_if_connected)
        raise
    try:
        if not done:
            connecting.cancel()
            connecting.add_done_callback(_abort_if_connected)
            raise TimeoutError
        reader, writer = connecting.result()
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        budget.connect_failures += 1
        result.ending = f"connect-failed-{type(exc).__name__}"
        return result
    pump = asyncio.create_task(conv.pump(reader))
    rng = random.Random(f"io:{plan.index}")
    why: str | None = None
    try:
        async with asyncio.timeout(CONNECTION_TIMEOUT):
            if plan.reader == "tunnel":
                batches = _tunnel_batches(rng, plan.frames, plan.tunnel_chunks)
            elif plan.reader in ("http", "raw"):
                batches = [(f, 1) for f in plan.frames]  # one blob at a time
            else:
                batches = _batches(plan.frames)
            if plan.head:
                if plan.pipelined:
                    first = batches[0] if batches else (b"", 0)
                    batches[:1] = [(plan.head + first[0], first[1])]
                else:
                    writer.write(plan.head)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(conv.head_done.wait(), HEAD_TIMEOUT)
                    if not conv.head_done.is_set():
                        why = "no-answer"
                    elif conv.status != 101 and not plan.on_refusal_send:
                        batches = []
            if why is None:
                why = await _write_all(writer, batches, budget, result, conv)
            if why is None and plan.ending == "linger":
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(conv.eof.wait(), plan.linger)
            elif why is None and plan.linger:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(conv.eof.wait(), min(plan.linger, 0.2))
    except TimeoutError:
        why = "hung"
    finally:
        transport = writer.transport
        if plan.ending == "abort" or why is not None or conv.eof.is_set():
            transport.abort()
        else:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)
            transport.abort()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(conv.eof.wait()), 5)
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
    ending = conv.ending()
    if ending == "open":
        ending = "client-closed"
    if why in ("stalled", "hung", "no-answer") and not ending.startswith("http"):
        ending = f"{why}({ending})"
    result.ending = ending
    result.status = conv.status
    result.bytes_in = conv.bytes_in
    result.http_statuses = conv.http_statuses
    if conv.spdy is not None:
        result.rst = conv.spdy.rst
    elif conv.ws is not None and conv.ws.inner is not None:
        result.rst = conv.ws.inner.rst
    return result


# ----------------------------------------------------------------------------- the canary


#: asyncio's SSL transport before Python 3.12.8 (and on 3.13.0) keeps its socket open when it
#: was closed while the peer had not yet answered its close_notify and the event loop then ends
#: (CPython's PR 118960 fixed it); the canary's loop ends right after its session, so a server
#: that is a little slow with its own close_notify left a socket for the collector (CI saw it
#: as two ResourceWarnings at the teardown of test_fuzz_live_server). aiohttp's
#: ``enable_cleanup_closed`` aborts the SSL transports its connector closed when the session
#: closes; aiohttp refuses it (with a DeprecationWarning) where the leak is fixed.
SSL_SHUTDOWN_LEAKS = sys.version_info < (3, 12, 8) or (3, 13, 0) <= sys.version_info < (3, 13, 1)


def client_session() -> aiohttp.ClientSession:
    """An aiohttp session that leaves no socket behind when its event loop ends at once."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(enable_cleanup_closed=SSL_SHUTDOWN_LEAKS)
    )


@dataclass
class CanaryReport:
    planned: int
    sent: int = 0
    received: int = 0
    sha_sent: str = ""
    sha_received: str = ""
    status: str = ""
    stderr: bytes = b""
    error: str = ""
    connected: threading.Event = field(default_factory=threading.Event)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            not self.error
            and self.sent == self.planned
            and self.received == self.sent
            and self.sha_sent == self.sha_received
            and self.status == "Success"
        )


def canary_chunks(seed: int, total: int) -> Any:
    """Deterministic canary data: seeded blocks, each chunk stamped with its index."""
    rng = random.Random(f"canary:{seed}")
    blocks = [rng.randbytes(CANARY_CHUNK) for _ in range(8)]
    index = 0
    left = total
    while left > 0:
        size = min(CANARY_CHUNK, left)
        stamp = struct.pack(">QQ", index, seed & 0xFFFFFFFFFFFFFFFF)
        chunk = (stamp + blocks[index % 8][16:])[:size]
        yield chunk
        left -= size
        index += 1


async def canary(
    url: str,
    token: str,
    ssl_ctx: ssl.SSLContext,
    report: CanaryReport,
    seed: int,
    progress: Callable[[], float],
) -> None:
    """WebSocket v5 exec of ``cat``: send ``report.planned`` bytes, paced by ``progress()``
    (0..1), read them back, compare sha256; stdin ends with the v5 CLOSE signal."""
    path = (
        f"/api/v1/namespaces/default/pods/{POD}/exec"
        "?command=cat&stdin=true&stdout=true&stderr=true&container=main"
    )
    started = time.monotonic()
    sent_hash = hashlib.sha256()
    got_hash = hashlib.sha256()
    last_progress = time.monotonic()
    try:
        async with (
            client_session() as session,
            session.ws_connect(
                url + path,
                protocols=("v5.channel.k8s.io",),
                headers={"Authorization": f"Bearer {token}"},
                ssl=ssl_ctx,
                max_msg_size=0,
                autoping=True,
            ) as ws,
        ):
            if ws.protocol != "v5.channel.k8s.io":
                raise RuntimeError(f"negotiated {ws.protocol!r}")
            report.connected.set()

            async def receive() -> None:
                nonlocal last_progress
                while True:
                    msg = await ws.receive()
                    if msg.type != aiohttp.WSMsgType.BINARY:
                        return
                    data: bytes = msg.data
                    if not data:
                        continue
                    if data[0] == 1:
                        got_hash.update(data[1:])
                        report.received += len(data) - 1
                        last_progress = time.monotonic()
                    elif data[0] == 2:
                        report.stderr += data[1:][:1000]
                    elif data[0] == 3:
                        with contextlib.suppress(ValueError):
                            report.status = str(json.loads(data[1:]).get("status", ""))

            async def send() -> None:
                nonlocal last_progress
                for chunk in canary_chunks(seed, report.planned):
                    while (report.sent + len(chunk)) / report.planned > progress():
                        if reader.done():  # paced by another thread's figures: poll them
                            return
                        await asyncio.sleep(0.05)
                    sent_hash.update(chunk)
                    if report.received >= report.sent:  # nothing outstanding until now
                        last_progress = time.monotonic()
                    await ws.send_bytes(b"\x00" + chunk)
                    report.sent += len(chunk)
                await ws.send_bytes(b"\xff\x00")  # stdin EOF: cat exits

            async def watchdog() -> None:
                while True:
                    await asyncio.sleep(1.0)
                    idle = time.monotonic() - last_progress
                    if report.received < report.sent and idle > CANARY_STALL:
                        raise RuntimeError(
                            f"no canary bytes came back for {CANARY_STALL:.0f} s "
                            f"({report.received} of {report.sent})"
                        )

            reader = asyncio.create_task(receive())
            writer = asyncio.create_task(send())
            dog = asyncio.create_task(watchdog())
            tasks = (reader, writer, dog)
            try:
                # The reader ends the session (the server closes after the status); the
                # writer or the watchdog end it early by failing, even while the writer
                # is stuck in a send the server never reads.
                pending = set(tasks)
                while reader in pending:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
    except Exception as exc:
        report.error = f"{type(exc).__name__}: {exc}"
    finally:
        report.connected.set()
        report.sha_sent = sent_hash.hexdigest()
        report.sha_received = got_hash.hexdigest()
        report.seconds = time.monotonic() - started


def run_canary_thread(
    url: str,
    token: str,
    ssl_ctx: ssl.SSLContext,
    report: CanaryReport,
    seed: int,
    progress: Callable[[], float],
) -> threading.Thread:
    """The canary on its own event loop in a thread: fuzz workers cannot starve its loop."""

    def main() -> None:
        asyncio.run(canary(url, token, ssl_ctx, report, seed, progress))

    thread = threading.Thread(target=main, name="canary", daemon=True)
    thread.start()
    return thread


async def probe_exec(url: str, token: str, ssl_ctx: ssl.SSLContext, limit: float = 60) -> str:
    """A fresh short exec: '' if it worked, else what went wrong (within ``limit`` s)."""
    path = (
        f"/api/v1/namespaces/default/pods/{POD}/exec"
        "?command=echo&command=probe-ok&stdout=true&container=main"
    )
    out = b""
    status = ""
    try:
        async with (
            asyncio.timeout(limit),
            client_session() as session,
            session.ws_connect(
                url + path,
                protocols=("v5.channel.k8s.io",),
                headers={"Authorization": f"Bearer {token}"},
                ssl=ssl_ctx,
            ) as ws,
        ):
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY or not msg.data:
                    continue
                if msg.data[0] == 1:
                    out += msg.data[1:]
                elif msg.data[0] == 3:
                    status = str(json.loads(msg.data[1:]).get("status", ""))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    if out != b"probe-ok\n" or status != "Success":
        return f"unexpected output {out[:100]!r}, status {status!r}"
    return ""


# ----------------------------------------------------------------------------- the run


@dataclass
class Tally:
    connections: int = 0
    frames: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    endings: Counter[str] = field(default_factory=Counter)
    by_scenario: Counter[tuple[str, str]] = field(default_factory=Counter)
    scenarios: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)
    rst: Counter[int] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    mutations: Counter[str] = field(default_factory=Counter)

    def add(self, r: ConnResult) -> None:
        self.connections += 1
        self.frames += r.sent
        self.bytes_out += r.bytes_out
        self.bytes_in += r.bytes_in
        self.endings[r.ending] += 1
        self.by_scenario[(r.scenario, r.ending)] += 1
        self.scenarios[r.scenario] += 1
        self.tokens[r.token_kind] += 1
        self.rst.update(r.rst)
        self.statuses.update(r.http_statuses)
        self.mutations.update(r.mutations)


async def fuzz(
    mat: Material,
    host: str,
    port: int,
    ctx: ssl.SSLContext,
    budget: Budget,
    seed: int,
    concurrency: int,
    tally: Tally,
    alive: Callable[[], bool],
) -> None:
    async def worker() -> None:
        while not budget.done:
            if time.monotonic() >= budget.deadline or not alive():
                return
            if budget.remaining <= 0:
                if budget.inflight == 0:
                    return
                await asyncio.sleep(0.05)
                continue
            if budget.connect_failures > 200:
                return
            index = budget.next_index
            budget.next_index += 1
            plan = make_plan(index, seed, mat)
            take = min(len(plan.frames), budget.remaining)
            del plan.frames[take:]
            budget.remaining -= take
            budget.inflight += 1
            try:
                result = await run_connection(plan, host, port, ctx, budget)
            finally:
                budget.inflight -= 1
            budget.remaining += take - min(result.sent, take)
            tally.add(result)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    budget.done = True


def _pod(runtime: str, image: str, echo_port: int) -> dict[str, Any]:
    return pod_manifest(
        POD,
        [
            {"name": "main", "image": image, "command": ["sleep", "100000"]},
            {
                "name": "echo",
                "image": image,
                "command": ["busybox", "nc", "-ll", "-p", str(echo_port), "-e", "cat"],
            },
            {"name": "attach", "image": image, "command": ["cat"], "stdin": True},
        ],
    )


async def warm_up(
    mat: Material, host: str, port: int, ctx: ssl.SSLContext, seed: int, url: str, token: str
) -> None:
    """One clean connection of every scenario and a short canary: whatever the server creates
    lazily (executor threads, the child watcher) exists before the baseline is taken."""
    budget = Budget(remaining=1 << 30, deadline=time.monotonic() + 120)
    for i, scenario in enumerate(SCENARIOS):
        plan = make_plan(-1 - i, seed, mat, scenario)
        plan.frames = [f for f in plan.frames[:50]]
        await run_connection(plan, host, port, ctx, budget)
    report = CanaryReport(planned=MIB)
    await canary(url, token, ctx, report, seed, lambda: 1.0)
    if not report.ok:
        raise RuntimeError(f"warm-up canary failed: {report}")
    if err := await probe_exec(url, token, ctx):
        raise RuntimeError(f"warm-up exec failed: {err}")


def rss_bound_kib(baseline_kib: int, concurrency: int) -> tuple[int, str]:
    """The peak RSS allowed, and why.

    Per connection the server may hold, by its Limits: read_buffer (1 MiB) of client input, a
    partial SPDY frame up to max_frame_size (1 MiB), one WebSocket message up to
    max_websocket_message (4 MiB), the tunnel's write_buffer (1 MiB) and a 256 KiB TLS read
    buffer: about 7.25 MiB, so 8 MiB per concurrent fuzz connection covers every bound at
    once; the canary holds the same; 64 MiB more for the allocator's slack and the process
    runtime's pipes. Never less than 256 MiB over the baseline.
    """
    extra = max(256 * MIB, (concurrency + 1) * 8 * MIB + 64 * MIB)
    why = (
        f"baseline + max(256 MiB, ({concurrency} fuzz conns + canary) x 8 MiB + 64 MiB): "
        "each connection can hold read_buffer 1 MiB + a max_frame_size 1 MiB partial frame + "
        "a 4 MiB WebSocket message + write_buffer 1 MiB + 256 KiB TLS buffer"
    )
    return baseline_kib + extra // 1024, why


def quiet_tail(text: str, chars: int) -> str:
    """The end of a server log with asyncio's repeated "socket.send() raised exception."
    lines left out (they are counted in ``server_log``)."""
    lines = [line for line in text.splitlines() if "socket.send() raised exception" not in line]
    return "\n".join(lines)[-chars:]


def rss_trend(samples: list[tuple[float, int]], points: int = 5) -> list[float]:
    """RSS (MiB) at evenly spaced moments of the run: a leak per connection climbs steadily,
    a bounded buffer levels off."""
    if not samples:
        return []
    picks = [samples[min(len(samples) - 1, i * (len(samples) - 1) // (points - 1))] for i in
             range(points)]  # fmt: skip
    return [round(kib / 1024, 1) for _, kib in picks]


#: Exceptions that only say the client went away (a fuzz connection aborted mid-upgrade).
CLIENT_GONE = ("ConnectionResetError", "ClientConnectionResetError", "BrokenPipeError")


def server_log_problems(text: str) -> dict[str, int]:
    """Lines in the server log that point at a bug rather than a peer's mistake.

    ``unexpected_tracebacks`` counts tracebacks whose exception is not one of
    :data:`CLIENT_GONE`; ``client_gone_tracebacks`` the others (logged at ERROR with a
    traceback although nothing is wrong with the server: noise a peer can cause).
    ``asyncio_send_warnings`` counts asyncio's "socket.send() raised exception.", which it logs
    once per write to a connection that is already lost.
    """
    unexpected = gone = 0
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            j = i + 1
            while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
                j += 1
            last = lines[j] if j < len(lines) else ""
            if last.split(":")[0].rsplit(".", 1)[-1] in CLIENT_GONE:
                gone += 1
            else:
                unexpected += 1
    return {
        "unexpected_tracebacks": unexpected,
        "client_gone_tracebacks": gone,
        "handler_failed": text.count("handler failed"),
        "never_retrieved": text.count("exception was never retrieved"),
        "error_lines": text.count(" ERROR "),
        "asyncio_send_warnings": text.count("socket.send() raised exception."),
    }


async def run(
    frames: int = DEFAULT_FRAMES,
    canary_bytes: int = DEFAULT_CANARY,
    time_limit: float = DEFAULT_TIME_LIMIT,
    runtime: str = "process",
    seed: int = 1,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    state_dir: Path | None = None,
    image: str | None = None,
    pause_image: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Start a server and a pod, fuzz it with a canary running, check it; the figures.

    ``figures["ok"]`` tells whether every check passed; ``figures["checks"]`` has each one.
    """
    started_wall = time.time()
    own_dir = state_dir is None
    base = Path(tempfile.mkdtemp(prefix="streamsrv-fuzz-")) if state_dir is None else state_dir
    extra: list[str] = []
    if runtime == "docker":
        image = image or os.environ.get("STREAMSRV_TEST_BUSYBOX_IMAGE", "streamsrv/busybox:local")
        pause = pause_image or os.environ.get("STREAMSRV_TEST_PAUSE_IMAGE")
        if pause:
            extra += ["--pause-image", pause]
    else:
        image = image or "busybox"
    server = LiveServer(base / "state", runtime=runtime, extra=extra)
    figures: dict[str, Any] = {
        "seed": seed,
        "runtime": runtime,
        "frames_target": frames,
        "canary_bytes_target": canary_bytes,
        "time_limit": time_limit,
        "concurrency": concurrency,
        "state_dir": str(base),
    }
    checks: dict[str, bool] = {}
    notes: dict[str, str] = {}
    sampler: Sampler | None = None
    canary_thread: threading.Thread | None = None
    try:
        await asyncio.to_thread(server.start)
        figures["url"] = server.url
        if runtime == "docker":
            echo_port, closed_port = 8080, 8081
        else:
            echo_port = free_port()
            closed_port = free_port({echo_port})
        await asyncio.to_thread(server.run_pod, _pod(runtime, image, echo_port))
        t0 = time.monotonic()
        mat = await asyncio.to_thread(Material.make, seed, echo_port, closed_port, server.token)
        figures["material_seconds"] = round(time.monotonic() - t0, 2)
        ctx = server.ssl_context()
        host, port = server.host, server.port

        await warm_up(mat, host, port, ctx, seed, server.url, server.token)
        await asyncio.sleep(1.0)
        baseline = await _settled_snapshot(server, None, 10.0)
        figures["baseline"] = baseline.as_dict()
        baseline_fd_kinds = fd_kinds(server.pid)
        echo(
            f"fuzz: server pid {server.pid} at {server.url}; baseline fds {baseline.fds}, "
            f"tasks {baseline.tasks}, connections {baseline.connections}, children "
            f"{baseline.children}, RSS {baseline.rss_kib / 1024:.1f} MiB"
        )

        sampler = Sampler(server, health_timeout=10.0, hang_after=HANG_AFTER)
        sampler.start()
        budget = Budget(remaining=frames, deadline=time.monotonic() + time_limit)
        fuzz_started = time.monotonic()

        def progress() -> float:
            if budget.done:
                return 1.0
            by_frames = budget.sent / max(frames, 1)
            by_time = (time.monotonic() - fuzz_started) / max(time_limit, 1e-9)
            return min(1.0, max(by_frames, by_time) + 0.002)

        report = CanaryReport(planned=canary_bytes)
        canary_thread = run_canary_thread(server.url, server.token, ctx, report, seed, progress)
        await asyncio.to_thread(report.connected.wait, 60)

        tally = Tally()
        reporter = asyncio.create_task(_report_progress(budget, tally, sampler, echo))
        try:

            def serving() -> bool:
                return server.alive() and not sampler.hung.is_set()

            await fuzz(mat, host, port, ctx, budget, seed, concurrency, tally, serving)
        finally:
            budget.done = True
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        fuzz_seconds = time.monotonic() - fuzz_started
        echo(f"fuzz: {tally.frames} frames on {tally.connections} connections in "
             f"{fuzz_seconds:.1f} s; waiting for the canary")  # fmt: skip

        # The canary ends by itself, or on its stall watchdog once the server stops
        # answering; the bound is only a last resort.
        canary_bound = max(300.0, canary_bytes / (2 * MIB)) + CANARY_STALL
        await asyncio.to_thread(canary_thread.join, canary_bound)
        if canary_thread.is_alive():
            report.error = report.error or f"canary did not finish within {canary_bound:.0f} s"
        sampler.stop()

        # ---- checks
        alive = server.alive()
        checks["server_alive"] = alive
        checks["server_responsive"] = not sampler.hung.is_set()
        if sampler.hung.is_set():
            notes["hang"] = (
                f"no health check answered for {HANG_AFTER:.0f} s, from "
                f"{sampler.hung_after_seconds} s into the run"
            )
            figures["hang_diagnosis"] = sampler.diagnosis
        healthy = alive and await asyncio.to_thread(server.healthz, 30)
        checks["healthz"] = healthy
        checks["canary_intact"] = report.ok
        if not report.ok:
            notes["canary"] = (
                f"error={report.error!r} sent={report.sent} received={report.received} "
                f"status={report.status!r} stderr={report.stderr[:200]!r}"
            )
        probe = await probe_exec(server.url, server.token, ctx) if healthy else "server down"
        checks["fresh_exec"] = probe == ""
        if probe:
            notes["fresh_exec"] = probe
        bound_kib, why = rss_bound_kib(baseline.rss_kib, concurrency)
        checks["rss_bounded"] = sampler.peak_rss_kib <= bound_kib and not sampler.server_died
        after: Snapshot | None = None
        settle_seconds = 0.0
        if healthy:
            t_settle = time.monotonic()
            await asyncio.sleep(2.0)
            after = await _settled_snapshot(server, baseline, SETTLE_TIMEOUT)
            settle_seconds = time.monotonic() - t_settle
        checks["fds_back"] = after is not None and after.fds <= baseline.fds + FD_TOLERANCE
        if after is not None:  # what the fds left over are, even within the tolerance
            left = fd_kinds(server.pid) - baseline_fd_kinds
            figures["new_fds"] = dict(left)
            # A terminal whose other side is gone is never needed at rest: no tolerance.
            dead = sum(n for name, n in left.items() if DEAD_TERMINAL.match(name))
            checks["no_dead_terminal_fds"] = dead == 0
            if dead:
                notes["dead_terminal_fds"] = f"{dead} fds of closed terminals left open"
        checks["tasks_back"] = after is not None and after.tasks <= baseline.tasks + TASK_TOLERANCE
        checks["children_back"] = after is not None and after.children <= baseline.children
        if after is not None and not checks["children_back"]:
            notes["children"] = repr(descendants(server.pid))
        if after is not None and not (checks["children_back"] and checks["tasks_back"]):
            # `streamsrv serve` logs where every live task waits on SIGUSR1
            with contextlib.suppress(OSError):
                os.kill(server.pid, signal.SIGUSR1)
                await asyncio.sleep(1)
        checks["health_during_run"] = sampler.health_failures == 0
        log_problems = server_log_problems(server.log_text())
        checks["no_unexpected_exceptions"] = (
            log_problems["unexpected_tracebacks"] == 0 and log_problems["never_retrieved"] == 0
        )
        if runtime == "docker" and healthy:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(
                    server.request, "DELETE", f"/api/v1/namespaces/default/pods/{POD}"
                )
        code = await asyncio.to_thread(server.stop)
        checks["clean_shutdown"] = code == 0

        figures.update(
            {
                "frames": tally.frames,
                "connections": tally.connections,
                "fuzz_seconds": round(fuzz_seconds, 1),
                "frames_per_second": round(tally.frames / max(fuzz_seconds, 1e-9)),
                "bytes_out": tally.bytes_out,
                "bytes_in": tally.bytes_in,
                "time_limit_hit": tally.frames < frames,
                "endings": dict(tally.endings.most_common()),
                "scenarios": dict(tally.scenarios.most_common()),
                "endings_by_scenario": {
                    f"{sc}: {end}": n for (sc, end), n in sorted(tally.by_scenario.items())
                },
                "tokens": dict(tally.tokens.most_common()),
                "rst_received": {str(k): v for k, v in sorted(tally.rst.items())},
                "http_statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
                "mutations": dict(tally.mutations.most_common()),
                "canary": {
                    "bytes_sent": report.sent,
                    "bytes_received": report.received,
                    "sha256_sent": report.sha_sent,
                    "sha256_received": report.sha_received,
                    "status": report.status,
                    "seconds": round(report.seconds, 1),
                    "error": report.error,
                },
                "rss_kib": {
                    "baseline": baseline.rss_kib,
                    "peak": sampler.peak_rss_kib,
                    "bound": bound_kib,
                    "after": after.rss_kib if after else None,
                    "bound_reason": why,
                    "samples": len(sampler.rss_samples),
                    "trend_mib": rss_trend(sampler.rss_samples),
                },
                "after": after.as_dict() if after else None,
                "settle_seconds": round(settle_seconds, 1),
                "peaks": {
                    "fds": sampler.peak_fds,
                    "tasks": sampler.peak_tasks,
                    "connections": sampler.peak_connections,
                },
                "server_cpu": {
                    "busiest_2s_percent": sampler.busiest_cpu_percent,
                    "seconds": round(sampler.cpu_samples[-1][1] - sampler.cpu_samples[0][1], 1)
                    if sampler.cpu_samples
                    else 0.0,
                },
                "health": {
                    "checks": sampler.health_checks,
                    "failures": sampler.health_failures,
                    "worst_latency_s": round(sampler.worst_health_latency, 2),
                },
                "server_log": log_problems,
                "shutdown_exit_code": code,
            }
        )
    except Exception as exc:
        checks["harness"] = False
        notes["harness"] = f"{type(exc).__name__}: {exc}"
    finally:
        if sampler is not None:
            sampler.stop()
        if server.proc is not None:
            await asyncio.to_thread(server.stop)
        if canary_thread is not None:
            canary_thread.join(30)
    figures["checks"] = checks
    figures["notes"] = notes
    figures["ok"] = bool(checks) and all(checks.values())
    figures["duration_seconds"] = round(time.time() - started_wall, 1)
    if not figures["ok"]:
        figures["server_log_tail"] = quiet_tail(server.log_text(), 6000)
    elif own_dir:
        shutil.rmtree(base, ignore_errors=True)
    return figures


async def _settled_snapshot(
    server: LiveServer, baseline: Snapshot | None, limit: float
) -> Snapshot:
    """A snapshot once the counts stop moving (or are back to ``baseline``), within
    ``timeout``."""
    deadline = time.monotonic() + limit
    last = await asyncio.to_thread(server.snapshot)
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        now = await asyncio.to_thread(server.snapshot)
        if baseline is not None:
            if (
                now.fds <= baseline.fds + FD_TOLERANCE
                and now.tasks <= baseline.tasks + TASK_TOLERANCE
                and now.children <= baseline.children
            ):
                return now
        elif (now.fds, now.tasks, now.children) == (last.fds, last.tasks, last.children):
            return now
        last = now
    return last


async def _report_progress(
    budget: Budget, tally: Tally, sampler: Sampler, echo: Callable[[str], None]
) -> None:
    started = time.monotonic()
    while True:
        await asyncio.sleep(15)
        elapsed = time.monotonic() - started
        echo(
            f"fuzz: {elapsed:6.0f} s  frames {budget.sent:>9}  connections {tally.connections:>6}"
            f"  RSS peak {sampler.peak_rss_kib / 1024:.0f} MiB  health worst "
            f"{sampler.worst_health_latency:.2f} s"
        )


# ----------------------------------------------------------------------------- output


def summary_line(f: dict[str, Any]) -> str:
    c = f.get("canary", {})
    rss = f.get("rss_kib", {})
    base = f.get("baseline", {})
    after = f.get("after") or {}
    verdict = "PASS" if f["ok"] else "FAIL " + ",".join(k for k, v in f["checks"].items() if not v)
    sha = "sha256 match" if c.get("sha256_sent") == c.get("sha256_received") else "sha256 MISMATCH"
    return (
        f"fuzz {verdict}: seed {f['seed']}, {f.get('frames', 0)} frames "
        f"({f.get('frames_per_second', 0)}/s) on {f.get('connections', 0)} connections in "
        f"{f.get('fuzz_seconds', 0)} s; canary {c.get('bytes_received', 0)}/"
        f"{f['canary_bytes_target']} B {sha} status {c.get('status')!r}; RSS "
        f"{rss.get('baseline', 0) / 1024:.0f}->{rss.get('peak', 0) / 1024:.0f} MiB "
        f"(bound {rss.get('bound', 0) / 1024:.0f}); fds {base.get('fds')}->{after.get('fds')}, "
        f"tasks {base.get('tasks')}->{after.get('tasks')}, children "
        f"{base.get('children')}->{after.get('children')}; total {f['duration_seconds']} s"
    )


TABLE_HEADER = (
    "| seed | frames | connections | fuzz s | canary bytes | canary sha256 | RSS base / peak / "
    "bound MiB | fds before / after | tasks before / after | result |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def table_row(f: dict[str, Any]) -> str:
    c = f.get("canary", {})
    rss = f.get("rss_kib", {})
    base = f.get("baseline", {})
    after = f.get("after") or {}
    sha = c.get("sha256_received", "")[:12]
    match = "match" if c.get("sha256_sent") == c.get("sha256_received") else "MISMATCH"
    return (
        f"| {f['seed']} | {f.get('frames', 0):,} | {f.get('connections', 0):,} | "
        f"{f.get('fuzz_seconds', 0)} | {c.get('bytes_received', 0):,} | {sha} ({match}) | "
        f"{rss.get('baseline', 0) / 1024:.0f} / {rss.get('peak', 0) / 1024:.0f} / "
        f"{rss.get('bound', 0) / 1024:.0f} | {base.get('fds')} / {after.get('fds')} | "
        f"{base.get('tasks')} / {after.get('tasks')} | {'pass' if f['ok'] else 'FAIL'} |"
    )


def _size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([kKmMgG]i?[bB]?)?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    unit = (m.group(2) or "").lower()[:1]
    return int(m.group(1)) * {"": 1, "k": 1024, "m": MIB, "g": GIB}[unit]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m soak.fuzz", description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES)
    p.add_argument("--canary-bytes", type=_size, default=DEFAULT_CANARY, help="e.g. 1GiB")
    p.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT, help="seconds")
    p.add_argument("--runtime", choices=["process", "docker"], default="process")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    p.add_argument("--state-dir", type=Path, help="keep the server's state (and log) here")
    p.add_argument("--image", help="the pod's image (docker: a busybox image)")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    figures = asyncio.run(
        run(
            args.frames,
            args.canary_bytes,
            args.time_limit,
            args.runtime,
            args.seed,
            concurrency=args.concurrency,
            state_dir=args.state_dir,
            image=args.image,
        )
    )
    tail = figures.pop("server_log_tail", "")
    printable = {k: v for k, v in figures.items() if k != "rss_samples"}
    print(json.dumps(printable, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    if not figures["ok"]:
        print("--- server log (tail) ---\n" + tail, file=sys.stderr)
    print(summary_line(figures))
    print(TABLE_HEADER)
    print(table_row(figures))
    print(soak_row(figures))
    return 0 if figures["ok"] else 1


def soak_row(f: dict[str, Any]) -> str:
    """The run as a line of docs/reliability.md's table."""
    c = f.get("canary", {})
    rss = f.get("rss_kib", {})
    base = f.get("baseline", {})
    after = f.get("after") or {}
    match = c.get("sha256_sent") == c.get("sha256_received")
    return row(
        f"socket fuzzer ({f.get('runtime', 'process')}, seed {f['seed']})",
        f"canary exec moving {c.get('bytes_received', 0) / MIB:.0f} MiB through `cat`",
        f"{f.get('frames', 0):,} mutated frames on {f.get('connections', 0):,} connections "
        f"(SPDY, WebSocket, tunnel, HTTP garbage) in {f.get('fuzz_seconds', 0)} s",
        "nothing (canary sha256 equal)" if match else "CANARY BYTES DIFFER",
        f"RSS {rss.get('baseline', 0) / 1024:.0f} -> peak {rss.get('peak', 0) / 1024:.0f} MiB "
        f"(bound {rss.get('bound', 0) / 1024:.0f}); fds {base.get('fds')} -> {after.get('fds')}, "
        f"tasks {base.get('tasks')} -> {after.get('tasks')}",
        bool(f["ok"]),
    )


if __name__ == "__main__":
    sys.exit(main())
