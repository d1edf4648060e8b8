"""Session recording and the audit log with real kubectl 1.27 and 1.33 on both runtimes
(docs/recording.md): what `asciinema cat` prints of each recording, what each audit line says,
the recordings API, and sessions that go on when the recording disk is full or read-only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    BUSYBOX,
    RUNTIMES,
    Server,
    _remove_everything,
    echo_pod,
    metric,
    missing,
    require_runtime,
    until,
)

pytestmark = [pytest.mark.docker, pytest.mark.kubectl]

VERSIONS = ("1.27", "1.33")
#: kubectl 1.30+ speaks WebSocket to a server that offers it; 1.27 only SPDY.
TRANSPORT = {"1.27": "spdy", "1.33": "websocket"}
HANG = 60.0
POD = f"""apiVersion: v1
kind: Pod
metadata: {{name: rec}}
spec:
  containers:
  - {{name: main, image: {BUSYBOX}, command: ["sleep", "100000"]}}
"""
#: A container that echoes its stdin, which ends with the first attached client's input.
ONCE = """apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  containers:
  - name: once
    image: {image}
    command: ["sh", "-c", "cat; echo bye-from-once"]
    stdin: true
    stdinOnce: true
"""


def asciinema() -> list[str]:
    exe = Path(sys.executable).with_name("asciinema")
    if not exe.exists():
        missing("asciinema is not installed (the test extra); run scripts/test")
    return [str(exe)]


def cat(path: Path) -> str:
    r = subprocess.run([*asciinema(), "cat", str(path)], capture_output=True, text=True,
                       timeout=HANG, stdin=subprocess.DEVNULL)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout


def audit_lines(directory: Path) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for path in sorted(directory.glob("audit-*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


def logged(server: Server) -> list[dict[str, Any]]:
    """Audit lines the server logged because its audit file could not be written."""
    return [
        json.loads(line.split(" audit: ", 1)[1])
        for line in server.log.read_text().splitlines()
        if " audit: {" in line
    ]


def audit_of(directory: Path, marker: str) -> dict[str, Any]:
    """The audit line of the session whose command holds ``marker`` (written once the
    session's recording is)."""

    def find() -> dict[str, Any] | None:
        for line in audit_lines(directory):
            if marker in " ".join(line.get("command") or []):
                return line
        return None

    found: dict[str, Any] = until(f"an audit line for {marker}", find)
    return found


def start(directory: Path, runtime: str, *extra: str) -> Server:
    require_runtime(runtime)
    server = Server(directory / "state", runtime=runtime, extra=list(extra))
    server.start()
    path = server.state_dir / "pod.yaml"
    path.write_text(POD)
    r = server.cli("pod", "run", "-f", str(path))
    assert r.returncode == 0, r.stderr
    r = server.kubectl("1.33", "wait", "--for=condition=Ready", "pod/rec", "--timeout=60s")
    assert r.returncode == 0, r.stderr
    return server


@pytest.fixture(scope="module", params=RUNTIMES)
def srv(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Server]:
    runtime = request.param
    require_runtime(runtime)
    if runtime == "docker":
        _remove_everything()
    base = tmp_path_factory.mktemp("recording")
    server = start(base, runtime, "--record", str(base / "rec"))
    server.record_dir = base / "rec"  # type: ignore[attr-defined]
    yield server
    server.stop()
    if runtime == "docker":
        _remove_everything()


def rec_dir(srv: Server) -> Path:
    path: Path = srv.record_dir  # type: ignore[attr-defined]
    return path


# ------------------------------------------------------------------------------ recordings


@pytest.mark.parametrize("version", VERSIONS)
def test_exec_is_recorded_and_audited(srv: Server, version: str) -> None:
    marker = f"m{time.monotonic_ns()}"
    r = srv.kubectl(version, "exec", "rec", "-c", "main", "--",
                    "sh", "-c", f"echo out-{marker}; echo err-{marker} >&2; exit 7")  # fmt: skip
    assert r.returncode == 7, r.stderr
    assert r.stdout == f"out-{marker}\n" and f"err-{marker}" in r.stderr
    line = audit_of(rec_dir(srv), marker)
    assert line["exitCode"] == 7 and line["error"] is None, line
    assert line["kind"] == "exec" and line["via"] == "kubectl"
    assert (line["namespace"], line["pod"], line["container"]) == ("default", "rec", "main")
    assert line["user"].startswith("bearer:") and srv.token not in json.dumps(line)
    # which transport carried it: kubectl 1.33 on WebSocket v5, 1.27 on SPDY
    assert line["transport"] == TRANSPORT[version], line
    assert line["protocol"] == ("v5.channel.k8s.io" if version == "1.33" else "v4.channel.k8s.io")
    assert line["bytesOut"] == len(f"out-{marker}\nerr-{marker}\n") and line["bytesIn"] == 0
    assert line["client"].startswith("127.0.0.1:") and line["truncated"] is False
    cast_path = rec_dir(srv) / line["recording"]
    text = cat(cast_path)
    assert f"out-{marker}" in text and f"err-{marker}" in text, text
    head = json.loads(cast_path.read_text().splitlines()[0])
    assert head["version"] == 2 and head["title"] == "default/rec/main"
    assert marker in head["command"]
    assert stat.S_IMODE(cast_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(rec_dir(srv).stat().st_mode) == 0o700
    audit_file = next(rec_dir(srv).glob("audit-*.jsonl"))
    assert stat.S_IMODE(audit_file.stat().st_mode) == 0o600


@pytest.mark.parametrize("version", VERSIONS)
def test_stdin_is_counted_not_recorded(srv: Server, version: str) -> None:
    """Input is counted in the audit line; it is recorded only with --record-input."""
    marker = f"in{time.monotonic_ns()}"
    r = srv.kubectl(version, "exec", "-i", "rec", "-c", "main", "--", "sh", "-c",
                    f"wc -c; echo {marker}", input="x" * 1000)  # fmt: skip
    assert r.returncode == 0, r.stderr
    line = audit_of(rec_dir(srv), marker)
    assert line["bytesIn"] == 1000 and line["stdin"] is True and line["exitCode"] == 0
    events = [
        json.loads(x) for x in (rec_dir(srv) / line["recording"]).read_text().splitlines()[1:]
    ]
    assert events and all(e[1] != "i" for e in events), events
    assert "1000" in cat(rec_dir(srv) / line["recording"])


@pytest.mark.parametrize("version", VERSIONS)
def test_tty_session_records_its_size(srv: Server, version: str) -> None:
    """`kubectl exec -it` from a 100x30 terminal: the cast is 100x30, and shows what ran."""
    if shutil.which("script") is None:
        missing("script (util-linux) not found")
    marker = f"tty{time.monotonic_ns()}"
    kubectl = " ".join(srv.kubectl_cmd(version, "exec", "-it", "rec", "-c", "main", "--",
                                       "sh", "-c", f"'stty size; echo {marker}'"))  # fmt: skip
    script = ["script", "-qec", f"stty cols 100 rows 30; {kubectl}", "/dev/null"]
    r = subprocess.run(
        script, capture_output=True, text=True, timeout=HANG, stdin=subprocess.DEVNULL
    )
    assert r.returncode == 0 and marker in r.stdout, (r.stdout, r.stderr)
    line = audit_of(rec_dir(srv), marker)
    assert line["tty"] is True and line["exitCode"] == 0
    cast_path = rec_dir(srv) / line["recording"]
    head = json.loads(cast_path.read_text().splitlines()[0])
    assert (head["width"], head["height"]) == (100, 30), head
    assert "30 100" in cat(cast_path)


@pytest.mark.parametrize("version", VERSIONS)
def test_attach_is_recorded(srv: Server, version: str) -> None:
    """`kubectl attach -i` to a stdinOnce container: its output recorded, no exit code (an
    attach has none), the end of the client's input closes the container's stdin."""
    marker = f"att{time.monotonic_ns()}"
    pod = f"once{version.replace('.', '')}"
    path = srv.state_dir / f"{pod}.yaml"
    path.write_text(ONCE.format(name=pod, image=BUSYBOX))
    r = srv.kubectl("1.33", "create", "-f", str(path))
    assert r.returncode == 0, r.stderr
    r = srv.kubectl("1.33", "wait", "--for=condition=Ready", f"pod/{pod}", "--timeout=60s")
    assert r.returncode == 0, r.stderr
    before = {x["id"] for x in audit_lines(rec_dir(srv))}
    r = srv.kubectl(version, "attach", "-i", pod, input=f"{marker}\n", timeout=HANG)
    assert r.returncode == 0, r.stderr
    assert marker in r.stdout and "bye-from-once" in r.stdout, r.stdout

    def new_attach() -> dict[str, Any] | None:
        fresh = [x for x in audit_lines(rec_dir(srv)) if x["id"] not in before]
        return next((x for x in fresh if x["kind"] == "attach"), None)

    line = until("the attach's audit line", new_attach)
    assert line["command"] is None and line["container"] == "once" and line["exitCode"] is None
    assert marker in cat(rec_dir(srv) / line["recording"])


def test_recordings_api(srv: Server) -> None:
    marker = f"api{time.monotonic_ns()}"
    r = srv.kubectl("1.33", "exec", "rec", "-c", "main", "--", "echo", marker)
    assert r.returncode == 0, r.stderr
    line = audit_of(rec_dir(srv), marker)
    name = line["recording"].removesuffix(".cast")
    code, body = srv.get("/api/streamsrv/v1/recordings")
    assert code == 200, body
    doc = json.loads(body)
    assert doc["enabled"] is True
    names = [item["name"] for item in doc["items"]]
    assert names == sorted(names, reverse=True)  # newest first
    [item] = [i for i in doc["items"] if i["name"] == name]
    assert item["exitCode"] == 0 and item["pod"] == "rec" and item["command"] == ["echo", marker]
    assert item["size"] == (rec_dir(srv) / line["recording"]).stat().st_size
    code, text = srv.get(f"/api/streamsrv/v1/recordings/{name}")
    assert code == 200 and marker in text and text.startswith('{"version": 2')
    # no token, a wrong one, bad names, unknown names
    assert srv.get("/api/streamsrv/v1/recordings", token="wrong")[0] == 401
    assert srv.get(f"/api/streamsrv/v1/recordings/{name}", token="")[0] == 401
    for bad in ("..", "%2e%2e", "..%2faudit-20261202.jsonl", "audit-20261202.jsonl", "x" * 300):
        code, text = srv.get(f"/api/streamsrv/v1/recordings/{bad}")
        assert code in (400, 404), (bad, code, text)
        assert "20261202" not in text or "invalid recording name" in text
    code, text = srv.get("/api/streamsrv/v1/recordings/..%2faudit-20261202.jsonl")
    assert code in (400, 404) and '"kind":"exec"' not in text
    code, text = srv.get("/api/streamsrv/v1/recordings/foo")
    assert code == 400 and "invalid recording name" in text, text
    code, text = srv.get("/api/streamsrv/v1/recordings/20200101T000000Z-00000000")
    assert code == 404 and "not found" in text, text
    code, _ = srv.get("/api/streamsrv/v1/recordings?limit=" + urllib.parse.quote("-1"))
    assert code == 400


def test_portforward_is_audited(srv: Server) -> None:
    """A port-forward is not recorded, but has its audit line with its bytes. The process
    runtime's pod dials this host's loopback, so a listener here is the pod's server; on
    Docker and containerd the pod runs a `busybox nc` echo."""
    pod, port, echo = "rec", 0, srv.runtime != "process"
    with contextlib.ExitStack() as stack:
        if echo:
            pod, port = "rececho", 7000
            path = srv.state_dir / "echo.yaml"
            path.write_text(echo_pod(pod, port))
            r = srv.kubectl("1.33", "create", "-f", str(path))
            assert r.returncode == 0, r.stderr
            r = srv.kubectl("1.33", "wait", "--for=condition=Ready", f"pod/{pod}", "--timeout=60s")
            assert r.returncode == 0, r.stderr
        else:
            listener = stack.enter_context(socket.socket())
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            port = listener.getsockname()[1]
        before = {x["id"] for x in audit_lines(rec_dir(srv))}
        proc = srv.kubectl_popen("1.33", "port-forward", f"pod/{pod}", f":{port}",
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline().decode()
            local = int(first.split("127.0.0.1:")[1].split()[0])
            with socket.create_connection(("127.0.0.1", local), timeout=HANG) as c:
                c.sendall(b"ping" * 100)
                if echo:  # the pod sends the 400 bytes back
                    want = 400
                else:
                    conn, _ = listener.accept()
                    with conn:
                        got = b""
                        while len(got) < 400:
                            got += conn.recv(4096)
                        conn.sendall(b"pong" * 50)
                    want = 200
                back = b""
                while len(back) < want:
                    chunk = c.recv(4096)
                    assert chunk, back
                    back += chunk
        finally:
            proc.terminate()
            proc.communicate(timeout=HANG)

    def new_forward() -> dict[str, Any] | None:
        fresh = [x for x in audit_lines(rec_dir(srv)) if x["id"] not in before]
        return next((x for x in fresh if x["kind"] == "portforward"), None)

    line = until("the port-forward's audit line", new_forward)
    assert line["recording"] is None and line["pod"] == pod and line["ports"] == [port]
    assert (line["bytesIn"], line["bytesOut"]) == (400, want), line
    assert line["transport"] == "tunnel"  # kubectl 1.31+: SPDY tunnelled in WebSocket


# ------------------------------------------------------------------------------ metrics


def test_metrics_move_while_a_session_runs(srv: Server) -> None:
    before = srv.metrics()
    proc = srv.kubectl_popen("1.33", "exec", "-i", "rec", "-c", "main", "--", "cat",
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"y" * 5000)
        proc.stdin.flush()
        got = b""
        while len(got) < 5000:
            got += os.read(proc.stdout.fileno(), 65536)
        during = srv.metrics()
        assert metric(during, "streamsrv_active_sessions", kind="exec") >= 1, during
        for direction in ("in", "out"):
            name = "streamsrv_session_bytes_total"
            moved = metric(during, name, kind="exec", direction=direction) - metric(
                before, name, kind="exec", direction=direction
            )
            assert moved >= 5000, (direction, moved)
        proc.stdin.close()
        assert proc.wait(timeout=HANG) == 0
    finally:
        proc.kill()
        proc.wait(timeout=HANG)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()

    def ended() -> str | None:
        text = srv.metrics()
        count = metric(text, "streamsrv_session_duration_seconds_count", kind="exec")
        return text if count > metric(before, "streamsrv_session_duration_seconds_count",
                                      kind="exec") else None  # fmt: skip

    after = until("the session's end in the metrics", ended)
    assert metric(after, "streamsrv_sessions_total", kind="exec", transport="websocket") > metric(
        before, "streamsrv_sessions_total", kind="exec", transport="websocket"
    )
    assert metric(after, "streamsrv_recordings_total", result="complete") >= 1
    assert (
        metric(after, "streamsrv_runtime_call_duration_seconds_count", call="list_containers") > 0
    )
    assert metric(after, "streamsrv_tokens_capacity", purpose="browser") > 0
    assert "# TYPE streamsrv_session_duration_seconds histogram" in after
    assert srv.get("/metrics", token="")[0] == 401
    assert srv.get("/version", token="")[0] == 401


# ------------------------------------------------------------------------------ a bad disk


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *, read_only: bool = False) -> Iterator[Path]:
    if os.geteuid() != 0:
        missing("mounting a tmpfs for the recording directory needs root")
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size},mode=0700" + (",ro" if read_only else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> None:
    with contextlib.suppress(OSError), open(path / "filler", "wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()


@pytest.mark.parametrize("disk", ["full", "read-only", "fills-mid-session"])
def test_a_bad_recording_disk_leaves_sessions_working(tmp_path: Path, disk: str) -> None:
    """A recording directory on a full or read-only filesystem, or one that fills while a
    session writes 1 MiB: the sessions' output and exit codes are whole, the recording is
    marked failed or truncated, and what was written still reads."""
    rec = tmp_path / "rec"
    size = "256k" if disk == "fills-mid-session" else "64k"
    with tmpfs(rec, size, read_only=disk == "read-only"):
        if disk == "full":
            fill(rec)
        server = start(tmp_path, "process", "--record", str(rec))
        try:
            payload = 1 << 20
            expected = ("0123456789abcdef\n" * (payload // 17 + 1))[:payload]
            for version in VERSIONS:
                r = server.kubectl(version, "exec", "rec", "-c", "main", "--", "sh", "-c",
                                   f"yes 0123456789abcdef | head -c {payload}; exit 3")  # fmt: skip
                assert r.returncode == 3, r.stderr
                assert r.stdout == expected, len(r.stdout)
            metrics = until(
                "both recordings finished",
                lambda: (
                    (m := server.metrics()) and metric(m, "streamsrv_recordings_total") >= 2 and m
                ),
            )
            # An audit line the disk refused goes to the server's log instead.
            lines = until(
                "both audit lines", lambda: len(x := audit_lines(rec) + logged(server)) == 2 and x
            )
            assert all(x["exitCode"] == 3 and x["bytesOut"] == payload for x in lines), lines
            for line in lines:
                assert line["truncated"] is True and line["recordingError"], line
            if disk == "fills-mid-session":
                assert metric(metrics, "streamsrv_recordings_total", result="failed") == 2, metrics
                # What was written is a clean prefix that asciinema reads (the first session's
                # at least; the second may have found no room even for its header).
                casts = [rec / x["recording"] for x in lines if (rec / x["recording"]).exists()]
                assert casts, lines
                for path in casts:
                    text = cat(path)
                    assert expected.startswith(text) and len(text) < payload, len(text)
                assert max(len(cat(path)) for path in casts) > 16 * 1024
            else:
                assert metric(metrics, "streamsrv_recordings_total", result="failed") == 2, metrics
                why = "Read-only file system" if disk == "read-only" else "No space left"
                assert f"failed: {why}" in server.log.read_text()  # the disk problem, logged
                assert all(why in x["recordingError"] for x in lines), lines
            # the server still serves: a short session after the bad ones
            r = server.kubectl("1.33", "exec", "rec", "-c", "main", "--", "echo", "still-here")
            assert r.returncode == 0 and r.stdout == "still-here\n"
        finally:
            server.stop()


# ------------------------------------------------------------------------------ CRI nodes


@pytest.mark.parametrize("version", VERSIONS)
def test_a_session_through_a_cri_node_is_recorded_at_the_node(tmp_path: Path, version: str) -> None:
    """`serve --cri-endpoint` relays the session's frames to `streamsrv cri --record`: the
    node, which sees the streams, records it (names from the kubelet's configs); the gateway
    writes its own audit line for the relayed session, with no recording."""
    from tests.cri_env import streamsrv_cri

    require_runtime("process")
    node_rec, gw_rec = tmp_path / "node-rec", tmp_path / "gw-rec"
    with streamsrv_cri(tmp_path / "node", "process", ["--record", str(node_rec)]) as node:
        extra = ["--cri-endpoint", node.endpoint, "--cri-stream-ca", str(node.ca_file),
                 "--record", str(gw_rec)]  # fmt: skip
        server = Server(tmp_path / "gateway", extra=extra)
        server.start()
        try:
            path = tmp_path / "pod.yaml"
            path.write_text(POD)
            r = server.cli("pod", "run", "-f", str(path))
            assert r.returncode == 0, r.stderr
            r = server.kubectl("1.33", "wait", "--for=condition=Ready", "pod/rec", "--timeout=60s")
            assert r.returncode == 0, r.stderr
            marker = f"cri{time.monotonic_ns()}"
            r = server.kubectl(version, "exec", "rec", "-c", "main", "--",
                               "sh", "-c", f"echo {marker}; exit 4")  # fmt: skip
            assert r.returncode == 4 and r.stdout == f"{marker}\n", r.stderr
            at_node = audit_of(node_rec, marker)
            assert at_node["via"] == "cri" and at_node["user"] == "cri"
            assert (at_node["namespace"], at_node["pod"], at_node["container"]) == (
                "default", "rec", "main"
            )  # fmt: skip
            assert at_node["exitCode"] == 4 and marker in cat(node_rec / at_node["recording"])
            at_gateway = audit_of(gw_rec, marker)
            assert at_gateway["protocol"] == "relayed" and at_gateway["recording"] is None
            assert at_gateway["via"] == "kubectl" and at_gateway["bytesOut"] > len(marker)
            assert at_gateway["transport"] == TRANSPORT[version]
            assert not list(gw_rec.glob("*.cast"))
        finally:
            server.stop()
