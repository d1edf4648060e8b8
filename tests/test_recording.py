"""Session recording (streamsrv.recording): the cast encoding, the writer and its bounds, the
audit log, retention, and the metrics' exposition (docs/recording.md)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsrv.metrics import Metrics, instrument
from streamsrv.recording import (
    NAME,
    CastEncoder,
    RecordConfig,
    Recorder,
    Recording,
    Session,
    new_name,
    token_identity,
)
from streamsrv.requests import ExecRequest, Origin, PortForwardRequest

HANG = 30.0
ORIGIN = Origin(user="bearer:abc", namespace="ns", pod="web", container="main", via="kubectl")


def session(cmd: tuple[str, ...] = ("sh",), *, tty: bool = True) -> Session:
    req = ExecRequest("c" * 64, cmd, stdin=True, stdout=True, tty=tty, origin=ORIGIN)
    return Session(req, client="127.0.0.1:5", name=new_name(time.time()))


def load(path: Path) -> tuple[dict[str, Any], list[list[Any]]]:
    lines = path.read_text().splitlines()
    return json.loads(lines[0]), [json.loads(x) for x in lines[1:]]


async def finished(recorder: Recorder) -> None:
    """The recordings and audit lines of ended sessions are written."""
    tasks = set(recorder._tasks)
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=HANG)
        assert not pending


def casts(directory: Path) -> list[Path]:
    return list(directory.glob("*.cast"))


def audits(directory: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted(directory.glob("audit-*.jsonl"))
        for line in path.read_text().splitlines()
    ]


# ------------------------------------------------------------------------------ encoding


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), cuts=st.lists(st.integers(0, 200), max_size=20))
def test_any_chunking_decodes_as_the_whole(data: bytes, cuts: list[int]) -> None:
    """UTF-8 split across chunks comes out whole; bytes that are not UTF-8 become U+FFFD
    exactly as decoding the whole stream at once would make them."""
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    chunks = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    enc = CastEncoder()
    lines = enc.events((float(i), "o", c) for i, c in enumerate(chunks)) + enc.finish()
    text = "".join(json.loads(x)[2] for x in lines.decode().splitlines())
    assert text == data.decode("utf-8", "replace")


def test_a_character_split_across_chunks_is_one_event_later() -> None:
    enc = CastEncoder()
    snow = "☃".encode()
    first = enc.events([(0.5, "o", b"a" + snow[:1])])
    second = enc.events([(0.75, "o", snow[1:] + b"b")])
    assert json.loads(first) == [0.5, "o", "a"]
    assert json.loads(second) == [0.75, "o", "☃b"]


def test_pieces_end_with_whole_lines() -> None:
    enc = CastEncoder()
    pieces = list(enc.pieces(((i / 10, "o", b"x" * 1000) for i in range(200)), size=8192))
    assert len(pieces) > 10
    for piece in pieces:
        assert piece.endswith(b"\n") and all(json.loads(x) for x in piece.splitlines())


def test_names_and_identity() -> None:
    name = new_name(1_800_000_000.0)
    assert NAME.match(name) and name.startswith("20270115T080000Z-")
    for bad in ("..", "../x", "20270115T080000Z-xyz", name + "\n", "", "a" * 40):
        assert not NAME.match(bad)
    ident = token_identity("secret-token")
    assert ident.startswith("bearer:") and "secret" not in ident
    assert ident == token_identity("secret-token") != token_identity("other")


# ------------------------------------------------------------------------------ recorder


async def test_a_session_is_recorded_and_audited(tmp_path: Path) -> None:
    rec_dir = tmp_path / "rec"
    recorder = Recorder(RecordConfig(rec_dir))
    await recorder.start()
    try:
        s = session(("sh", "-c", "echo hi there"))
        recorder.begin(s)
        assert s.recording is not None
        s.resized(120, 40)  # before any output: the header's size
        s.output(b"hello \xe2\x98")
        s.output(b"\x83 world\r\n")
        s.input(b"secret\n")  # not recorded without record_input
        s.resized(100, 30)
        s.output(b"bye\r\n")
        s.exit_code = 3
        s.ended_at = time.time()
        recorder.end(s)
        await finished(recorder)
    finally:
        await recorder.close()
    path = rec_dir / (s.name + ".cast")
    head, events = load(path)
    assert (head["width"], head["height"]) == (120, 40)
    assert head["title"] == "ns/web/main" and head["command"] == "sh -c 'echo hi there'"
    assert [e[1:] for e in events] == [["o", "hello "], ["o", "☃ world\r\n"], ["r", "100x30"],
                                        ["o", "bye\r\n"]]  # fmt: skip
    assert [e[0] for e in events] == sorted(e[0] for e in events)
    assert stat.S_IMODE(rec_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    [line] = audits(rec_dir)
    assert line["exitCode"] == 3 and line["bytesIn"] == 7 and line["bytesOut"] == 22
    assert line["recording"] == s.name + ".cast" and line["truncated"] is False
    assert (line["user"], line["via"], line["pod"]) == ("bearer:abc", "kubectl", "web")
    assert line["command"] == ["sh", "-c", "echo hi there"] and line["tty"] is True
    audit_file = next(rec_dir.glob("audit-*.jsonl"))
    assert stat.S_IMODE(audit_file.stat().st_mode) == 0o600
    listed = recorder.listing()
    assert [i["name"] for i in listed] == [s.name]
    assert listed[0]["exitCode"] == 3 and listed[0]["size"] == path.stat().st_size


async def test_input_is_recorded_only_when_asked(tmp_path: Path) -> None:
    recorder = Recorder(RecordConfig(tmp_path, record_input=True))
    await recorder.start()
    s = session()
    recorder.begin(s)
    s.input(b"ls\r")
    s.output(b"ls\r\n")
    recorder.end(s)
    await finished(recorder)
    await recorder.close()
    _, events = load(tmp_path / (s.name + ".cast"))
    assert [e[1:] for e in events] == [["i", "ls\r"], ["o", "ls\r\n"]]


async def test_a_session_with_no_output_leaves_a_readable_file(tmp_path: Path) -> None:
    recorder = Recorder(RecordConfig(tmp_path))
    await recorder.start()
    s = session()
    recorder.begin(s)
    recorder.end(s)
    await finished(recorder)
    await recorder.close()
    head, events = load(tmp_path / (s.name + ".cast"))
    assert head["version"] == 2 and events == []


async def test_portforward_gets_an_audit_line_and_no_recording(tmp_path: Path) -> None:
    recorder = Recorder(RecordConfig(tmp_path))
    await recorder.start()
    s = Session(PortForwardRequest("s" * 64, (80,), origin=ORIGIN), name=new_name(time.time()))
    recorder.begin(s)
    s.input(b"abc")
    s.output(b"defgh")
    recorder.end(s)
    await finished(recorder)
    await recorder.close()
    assert s.recording is None and not casts(tmp_path)
    [line] = audits(tmp_path)
    assert line["kind"] == "portforward" and line["ports"] == [80]
    assert (line["bytesIn"], line["bytesOut"], line["recording"]) == (3, 5, None)


async def test_a_disk_that_cannot_keep_up_leaves_a_gap_not_a_slow_session(
    tmp_path: Path,
) -> None:
    """The writer thread is stuck: the session's side never waits, at most ``buffer`` bytes
    are held, what comes meanwhile is dropped, and once the disk has caught up the recording
    goes on after a marker saying how much it lacks."""
    recorder = Recorder(RecordConfig(tmp_path, buffer=64 * 1024, max_rate=1 << 40))
    await recorder.start()
    gate = threading.Event()
    real = Recording._write

    def stuck(self: Recording, batch: Any) -> str | None:
        gate.wait(HANG)
        return real(self, batch)

    s = session()
    recorder.begin(s)
    rec = s.recording
    assert rec is not None
    rec._write = stuck.__get__(rec)  # type: ignore[method-assign]
    t0 = time.monotonic()
    for _ in range(1000):  # 4 MiB against a 64 KiB buffer
        s.output(b"z" * 4096)
    assert time.monotonic() - t0 < 5  # never waited on the disk (generous bound)
    assert rec.truncated and rec._queued + rec._writing <= 64 * 1024
    assert s.bytes_out == 4096 * 1000  # the session's own count is whole
    gate.set()
    for _ in range(int(HANG * 100)):  # the disk catches up
        if not rec._queued + rec._writing:
            break
        await asyncio.sleep(0.01)
    s.output(b"after the gap")
    recorder.end(s)
    await finished(recorder)
    await recorder.close()
    _, events = load(tmp_path / (s.name + ".cast"))
    kept = sum(len(e[2]) for e in events if e[1] == "o" and e[2].startswith("z"))
    assert 0 < kept <= 64 * 1024
    [marker] = [e for e in events if e[1] == "m"]
    assert marker[2] == f"{4096 * 1000 - kept} bytes not recorded here: the disk could not keep up"
    assert events[-1][1:] == ["o", "after the gap"] and events.index(marker) == len(events) - 2
    [line] = audits(tmp_path)
    assert line["truncated"] is True and line["bytesOut"] == 4096 * 1000 + 13
    assert line["unrecordedBytes"] == 4096 * 1000 - kept


async def test_a_gap_still_open_at_the_end_is_marked(tmp_path: Path) -> None:
    recorder = Recorder(RecordConfig(tmp_path, buffer=8192, max_rate=1 << 40))
    await recorder.start()
    s = session()
    recorder.begin(s)
    for _ in range(10):  # nothing is written until the loop yields: 4 fit, 6 are dropped
        s.output(b"q" * 2048)
    recorder.end(s)
    await finished(recorder)
    await recorder.close()
    _, events = load(tmp_path / (s.name + ".cast"))
    assert [e[1] for e in events] == ["o"] * 4 + ["m"]
    assert events[-1][2].startswith("12288 bytes not recorded")


async def test_an_unwritable_directory_fails_the_recording_and_logs_the_audit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    recorder = Recorder(RecordConfig(blocker / "rec"))
    await recorder.start()  # logged, not raised
    s = session()
    recorder.begin(s)
    s.output(b"still served")
    s.exit_code = 0
    recorder.end(s)
    await finished(recorder)
    await recorder.close()
    assert s.recording is not None and s.recording.failed and s.recording.truncated
    assert "not usable" in caplog.text
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("audit: ")]
    [line] = [json.loads(m.removeprefix("audit: ")) for m in logged]
    assert line["recordingError"] and line["exitCode"] == 0 and line["bytesOut"] == 12


# ------------------------------------------------------------------------------ retention


def _file(directory: Path, name: str, size: int, age: float) -> Path:
    path = directory / name
    path.write_bytes(b"x" * size)
    t = time.time() - age
    os.utime(path, (t, t))
    return path


async def test_retention_by_age_and_size(tmp_path: Path) -> None:
    day = 86400.0
    cfg = RecordConfig(tmp_path, max_age=10 * day, max_bytes=3000)
    recorder = Recorder(cfg)
    await recorder.start()
    old = _file(tmp_path, "20200101T000000Z-00000001.cast", 10, 20 * day)
    old_audit = _file(tmp_path, "audit-20200101.jsonl", 10, 20 * day)
    a = _file(tmp_path, "20261101T000000Z-0000000a.cast", 1000, 3 * day)
    b = _file(tmp_path, "20261102T000000Z-0000000b.cast", 1000, 2 * day)
    c = _file(tmp_path, "20261103T000000Z-0000000c.cast", 1000, 1 * day)
    foreign = _file(tmp_path, "notes.txt", 5000, 30 * day)  # not ours: never touched
    s = session()
    recorder.begin(s)  # being written: never removed, even when oldest
    s.output(b"live")
    await asyncio.sleep(0.1)
    live = tmp_path / (s.name + ".cast")
    os.utime(live, (0, 0))
    removed = recorder.sweep()
    assert set(removed) == {old.name, old_audit.name, a.name}
    assert b.exists() and c.exists() and foreign.exists() and live.exists()
    recorder.end(s)
    await finished(recorder)
    await recorder.close()


async def test_nothing_is_removed_with_no_bounds(tmp_path: Path) -> None:
    recorder = Recorder(RecordConfig(tmp_path, max_age=0, max_bytes=0))
    _file(tmp_path, "20200101T000000Z-00000001.cast", 10_000, 10_000 * 86400.0)
    await recorder.start()
    assert recorder.sweep() == []
    await recorder.close()


async def test_the_list_remembers_audit_records_across_a_restart(tmp_path: Path) -> None:
    recorder = Recorder(RecordConfig(tmp_path))
    await recorder.start()
    s = session(("true",))
    recorder.begin(s)
    s.exit_code = 0
    recorder.end(s)
    await finished(recorder)
    await recorder.close()
    again = Recorder(RecordConfig(tmp_path))
    await again.start()
    [item] = again.listing()
    await again.close()
    assert item["name"] == s.name and item["exitCode"] == 0 and item["command"] == ["true"]
    assert again.path_of("../../etc/passwd") is None and again.path_of(s.name) is not None


# ------------------------------------------------------------------------------ metrics


def test_metrics_exposition_and_live_bytes() -> None:
    m = Metrics()
    s = session()
    s.transport = "websocket"
    m.established(s)
    s.bytes_in, s.bytes_out = 10, 2000
    text = m.render()
    assert 'streamsrv_active_sessions{kind="exec",transport="websocket"} 1.0' in text
    assert 'streamsrv_session_bytes_total{direction="out",kind="exec"} 2000.0' in text
    assert 'streamsrv_sessions_total{kind="exec",transport="websocket"} 1.0' in text
    m.ended(s, 1.5)
    m.ended(s, 1.5)  # once only
    text = m.render()
    assert 'streamsrv_active_sessions{kind="exec"' not in text
    assert 'streamsrv_session_bytes_total{direction="out",kind="exec"} 2000.0' in text
    assert 'streamsrv_session_duration_seconds_count{kind="exec"} 1.0' in text
    body, ctype = m.exposition("application/openmetrics-text; version=1.0.0")
    assert ctype.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")
    body, ctype = m.exposition(None)
    assert ctype.startswith("text/plain") and b"streamsrv_tasks" in body


async def test_instrument_times_calls_and_keeps_the_class() -> None:
    class Engine:
        async def list_containers(self) -> list[str]:
            await asyncio.sleep(0.01)
            return ["a"]

        def sync_call(self) -> int:
            return 1

    m = Metrics()
    engine = Engine()
    instrument(engine, ("list_containers", "sync_call", "missing"), m.runtime_calls)
    assert isinstance(engine, Engine) and engine.sync_call() == 1
    assert await engine.list_containers() == ["a"]
    text = m.render()
    assert 'streamsrv_runtime_call_duration_seconds_count{call="list_containers"} 1.0' in text
    assert "sync_call" not in text


async def test_an_existing_directory_keeps_its_mode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`--record /tmp` must not make /tmp 0700: a directory that exists is left as it is,
    with a warning when others can read it; a new one is made 0700."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    recorder = Recorder(RecordConfig(shared))
    await recorder.start()
    await recorder.close()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert "open to others" in caplog.text
    fresh = tmp_path / "a" / "b"
    recorder = Recorder(RecordConfig(fresh))
    await recorder.start()
    await recorder.close()
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700


async def test_list_items_have_one_shape_running_ended_or_orphaned(tmp_path: Path) -> None:
    """A running session's item, an ended one's and one whose server died before its audit
    line have the same keys; the orphan's are read from its cast's header."""
    recorder = Recorder(RecordConfig(tmp_path))
    await recorder.start()
    running, ended = session(("sh", "-c", "a b")), session(("true",))
    recorder.begin(running)
    recorder.begin(ended)
    running.output(b"x")
    ended.exit_code = 0
    recorder.end(ended)
    await asyncio.sleep(0.1)
    orphan = "20200101T000000Z-0000000f"
    (tmp_path / f"{orphan}.cast").write_text(
        '{"version": 2, "width": 80, "height": 24, "timestamp": 1577836800, '
        '"title": "ns/web/main", "command": "sh -c \'a b\'"}\n'
    )
    items = {i["name"]: i for i in recorder.listing()}
    recorder.end(running)
    await finished(recorder)
    await recorder.close()
    keys = {frozenset(i) for i in items.values()}
    assert len(keys) == 1, items
    live = items[running.name]
    assert live["end"] is None and live["exitCode"] is None and live["pod"] == "web"
    assert live["command"] == ["sh", "-c", "a b"] and live["kind"] == "exec"
    assert items[ended.name]["exitCode"] == 0 and items[ended.name]["end"] is not None
    old = items[orphan]
    assert (old["namespace"], old["pod"], old["container"]) == ("ns", "web", "main")
    assert old["command"] == ["sh", "-c", "a b"] and old["start"].startswith("2020-01-01")


async def drained(rec: Recording) -> None:
    """The writer has written everything queued."""
    for _ in range(int(HANG * 100)):
        if not rec._queued + rec._writing:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the writer never caught up")


async def test_output_faster_than_the_rate_leaves_a_gap(tmp_path: Path) -> None:
    """Bursts up to the buffer are recorded whole; beyond that a recording takes max_rate on
    average, and what comes faster is a gap with a marker that says so."""
    recorder = Recorder(RecordConfig(tmp_path, buffer=64 * 1024, max_rate=10_000))
    await recorder.start()
    s = session()
    recorder.begin(s)
    assert s.recording is not None
    for _ in range(16):
        s.output(b"b" * 4096)  # the burst: 64 KiB
    await drained(s.recording)  # room on the disk again; the tokens come back at 10 kB/s
    s.output(b"c" * 60_000)  # more than the tokens (unless this took 6 s): not recorded
    await asyncio.sleep(0.2)
    s.output(b"d" * 1000)
    recorder.end(s)
    await finished(recorder)
    await recorder.close()
    _, events = load(tmp_path / (s.name + ".cast"))
    text = "".join(e[2] for e in events if e[1] == "o")
    assert text == "b" * 65536 + "d" * 1000
    [marker] = [e[2] for e in events if e[1] == "m"]
    assert marker == "60000 bytes not recorded here: output came faster than 10000 bytes/s"
    [line] = audits(tmp_path)
    assert line["truncated"] is True and line["unrecordedBytes"] == 60_000
    assert line["bytesOut"] == 65536 + 61_000
