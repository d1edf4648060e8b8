"""Throughput of the SPDY/3.1 codec on 32 KiB DATA frames (what kubectl writes).

Run: ``.venv/bin/python bench/spdy_codec.py [MiB]`` (default 256).

* encode/write:  ``send_data`` of one 32 KiB chunk, then ``data_to_send`` (an adapter per write)
* encode/bulk:   ``send_data`` of 4 MiB (split into 32 KiB frames), then ``data_to_send``
* decode/64KiB:  the wire fed in 64 KiB reads (frames straddle the reads, so they are buffered)
* decode/frame:  the wire fed one whole frame per call (the no-buffering fast path)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from streamsrv.protocol.spdy import DataReceived, Role, SpdyConnection

CHUNK = 32 * 1024
BULK = 4 * 1024 * 1024


def _pair() -> tuple[SpdyConnection, SpdyConnection, int]:
    client, server = SpdyConnection(Role.CLIENT), SpdyConnection(Role.SERVER)
    sid = client.open_stream({"streamtype": "stdin"})
    server.receive_data(client.data_to_send())
    server.reply_stream(sid)
    client.receive_data(server.data_to_send())
    return client, server, sid


def _timed(label: str, total: int, run: Callable[[], int]) -> None:
    start = time.perf_counter()
    moved = run()
    elapsed = time.perf_counter() - start
    assert moved == total, (label, moved, total)
    mib = total / (1 << 20)
    print(f"{label:<14} {mib:8.0f} MiB in {elapsed:6.3f} s = {mib / elapsed:8.0f} MiB/s")


def main(total_mib: int = 256) -> None:
    total = total_mib << 20
    payload = bytes(range(256)) * (CHUNK // 256)
    bulk = payload * (BULK // CHUNK)

    def encode_per_write() -> int:
        client, _, sid = _pair()
        moved = 0
        for _ in range(total // CHUNK):
            client.send_data(sid, payload)
            moved += len(client.data_to_send()) - 8
        return moved

    def encode_bulk() -> int:
        client, _, sid = _pair()
        moved = 0
        for _ in range(total // BULK):
            client.send_data(sid, bulk)
            moved += len(client.data_to_send()) - 8 * (BULK // CHUNK)
        return moved

    # 4 MiB of wire, fed again and again (DATA frames carry no compression state).
    client, _, sid = _pair()
    client.send_data(sid, bulk)
    wire = client.data_to_send()
    frame = 8 + CHUNK
    frames = [wire[i : i + frame] for i in range(0, len(wire), frame)]
    reads = [wire[i : i + 65536] for i in range(0, len(wire), 65536)]

    def decode(pieces: list[bytes]) -> Callable[[], int]:
        def run() -> int:
            _, server, _ = _pair()
            moved = 0
            for _ in range(total // BULK):
                for piece in pieces:
                    for event in server.receive_data(piece):
                        if isinstance(event, DataReceived):
                            moved += len(event.data)
            return moved

        return run

    print(f"SPDY codec, 32 KiB DATA frames, Python {sys.version.split()[0]}")
    _timed("encode/write", total, encode_per_write)
    _timed("encode/bulk", total, encode_bulk)
    _timed("decode/64KiB", total, decode(reads))
    _timed("decode/frame", total, decode(frames))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 256)
