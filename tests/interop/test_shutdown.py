"""The server stopping under live sessions, with real kubectl on both runtimes.

- SIGTERM: new sessions are refused, live ones get ``--shutdown-grace``, then each ends with a
  status saying the server is shutting down (kubectl exits non-zero with that message, never a
  silent 0), its process is killed, port-forwards end, and the server exits promptly.
- SIGKILL: the next server finds the exec processes the killed one left and kills them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    RUNTIMES,
    Server,
    echo_pod,
    free_port,
    server_with_pod,
    wait_forwarding,
)

pytestmark = [pytest.mark.docker, pytest.mark.kubectl]

POD = "stoppod"
HANG = 30  # generous bounds: the old server took 123 s to exit on SIGTERM


@pytest.fixture(params=RUNTIMES)
def srv(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    port = free_port()
    with server_with_pod(
        tmp_path,
        echo_pod(POD, port),
        request.param,
        ["--shutdown-grace", "1"],
    ) as server:
        server.port = port  # type: ignore[attr-defined]
        yield server


def marker() -> str:
    return str(100000 + int.from_bytes(os.urandom(2), "big"))


def wait_for(srv: Server, pattern: str) -> None:
    deadline = time.monotonic() + HANG
    while not srv.processes(pattern):
        assert time.monotonic() < deadline, f"{pattern!r} never started"
        time.sleep(0.1)


def test_sigterm_ends_every_session_with_a_status_and_kills_its_process(srv: Server) -> None:
    words = {v: marker() for v in ("1.27", "1.33")}
    execs = {
        v: srv.kubectl_popen(
            v, "exec", POD, "--", "sleep", w, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )  # fmt: skip
        for v, w in words.items()
    }
    pf_log = srv.state_dir / "pf.log"
    with pf_log.open("wb") as out:
        pf = srv.kubectl_popen("1.33", "port-forward", f"pod/{POD}", f":{srv.port}",  # type: ignore[attr-defined]
                   stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        for w in words.values():
            wait_for(srv, f"sleep {w}")
        wait_forwarding(pf, pf_log, [srv.port])  # type: ignore[attr-defined]
        assert srv.proc is not None
        began = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(HANG)
        took = time.monotonic() - began
        for v, proc in execs.items():
            _, err = proc.communicate(timeout=HANG)
            assert proc.returncode != 0, (v, err)  # kubectl 1.27 used to exit 0, silently
            assert b"the server is shutting down" in err, (v, err)
        assert pf.wait(HANG) is not None  # the forward ended with the server
    finally:
        for proc in [*execs.values(), pf]:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    log = srv.log.read_text()
    assert "ending 3 sessions" in log, log[-3000:]
    assert took < HANG
    if srv.runtime == "docker":  # the processes were killed (the process runtime's die anyway)
        srv.start()
        for w in words.values():
            assert not srv.processes(f"sleep {w}")


def test_a_killed_servers_execs_are_killed_by_the_next_one(srv: Server) -> None:
    word = marker()
    proc = srv.kubectl_popen("1.33", "exec", POD, "--", "sleep", word,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(srv, f"sleep {word}")
        assert srv.proc is not None
        srv.proc.kill()  # no chance to clean up
        srv.proc.wait()
        srv.proc = None
        proc.wait(HANG)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    srv.start()  # the next server cleans up what the killed one left
    deadline = time.monotonic() + HANG
    while left := srv.processes(f"sleep {word}"):
        assert time.monotonic() < deadline, f"left running: {left}"
        time.sleep(0.2)
    if srv.runtime == "docker":  # (the process runtime's pods die with their server)
        assert "killed 1 exec processes a previous server left running" in srv.log.read_text()
        # ... and the pod still works
        r = srv.kubectl("1.33", "exec", POD, "--", "echo", "ok")
        assert r.returncode == 0 and r.stdout == "ok\n", r
