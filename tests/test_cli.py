"""`streamsrv pod run|ls|rm` through a running server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BUSYBOX, Server, unique

pytestmark = pytest.mark.docker


def test_pod_run_ls_rm(server: Server, tmp_path: Path) -> None:
    name = unique("cli")
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(
        f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: team}}
spec:
  containers:
  - name: app
    image: {BUSYBOX}
    command: [sleep, "100000"]
    workingDir: /tmp
    env: [{{name: GREETING, value: hello}}]
    tty: true
    stdin: true
"""
    )
    r = server.cli("pod", "run", "-f", str(manifest))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"pod/{name} created"

    r = server.cli("pod", "ls", "-n", "team")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "READY", "STATUS", "CONTAINERS"]
    assert lines[1].split() == ["team", name, "1/1", "Running", "app"]

    r = server.cli("pod", "ls")  # default namespace: nothing there
    assert r.stdout.strip().splitlines()[1:] == []
    r = server.cli("pod", "ls", "-A", "-o", "json")
    items = json.loads(r.stdout)["items"]
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items] == [("team", name)]
    spec = items[0]["spec"]["containers"][0]
    assert spec["env"] == [{"name": "GREETING", "value": "hello"}]
    assert spec["tty"] is True and spec["stdin"] is True

    r = server.cli("pod", "run", "-f", str(manifest))
    assert r.returncode == 1
    assert "already exists" in r.stderr

    r = server.cli("pod", "rm", name, "-n", "team")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f'pod "{name}" deleted'
    r = server.cli("pod", "rm", name, "-n", "team")
    assert r.returncode == 1
    assert f'pods "{name}" not found' in r.stderr


def test_pod_run_rejects_bad_yaml(server: Server, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("metadata: [unclosed")
    r = server.cli("pod", "run", "-f", str(bad))
    assert r.returncode == 1
    assert "not valid YAML" in r.stderr


def test_pod_commands_without_a_server(tmp_path: Path) -> None:
    srv = Server(tmp_path / "nothing-here")
    r = srv.cli("pod", "ls")
    assert r.returncode == 2
    assert "no kubeconfig" in r.stderr


NO_ENGINE = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}


def test_auto_falls_back_to_the_process_runtime_and_says_so(tmp_path: Path) -> None:
    srv = Server(tmp_path / "state", runtime="auto", env=NO_ENGINE)
    srv.start()
    try:
        log = srv.log.read_text()
        assert "(runtime: process)" in log
        assert "no Docker engine answered at unix:///nonexistent/docker.sock" in log
        assert "NO isolation" in log
    finally:
        srv.stop()


def test_docker_runtime_without_an_engine_is_a_clear_error(tmp_path: Path) -> None:
    srv = Server(tmp_path / "state")
    r = subprocess.run(
        [sys.executable, "-m", "streamsrv", "--state-dir", str(srv.state_dir), "serve",
         "--runtime", "docker", "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, env=NO_ENGINE,
    )  # fmt: skip
    assert r.returncode == 2
    assert "no Docker engine answered at unix:///nonexistent/docker.sock" in r.stderr


def test_every_limit_is_a_serve_flag() -> None:
    from streamsrv.cli import build_parser, limits_from_args
    from streamsrv.limits import Limits

    args = build_parser().parse_args(
        [
            "serve",
            "--idle-timeout",
            "60",
            "--max-connections",
            "10",
            "--max-websocket-message",
            "4096",
        ]
    )
    assert limits_from_args(args) == Limits(
        idle_timeout=60, max_connections=10, max_websocket_message=4096
    )
    assert limits_from_args(build_parser().parse_args(["serve"])) == Limits()


def test_a_limit_that_is_not_positive_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "streamsrv", "--state-dir", str(tmp_path), "serve",
         "--runtime", "process", "--listen", "127.0.0.1:0", "--idle-timeout", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "idle_timeout must be positive" in proc.stderr


def test_a_copied_kubeconfig_keeps_working_after_a_restart(tmp_path: Path) -> None:
    """The token is kept in STATE_DIR/token (0600, in a 0700 directory); --rotate-token makes
    a new one and every copy made before stops working (401)."""
    srv = Server(tmp_path / "state", runtime="process")
    srv.start()
    try:
        copy = srv.kubeconfig.read_text()
        token = srv.token
        assert srv.get("/version")[0] == 200
        srv.stop()
        srv.start()
        assert srv.token == token and srv.get("/version", token)[0] == 200
        assert oct(srv.state_dir.stat().st_mode & 0o777) == "0o700"
        assert oct((srv.state_dir / "token").stat().st_mode & 0o777) == "0o600"
        srv.stop()
        srv.extra = ["--rotate-token"]
        srv.start()
        assert srv.token != token
        assert srv.get("/version", token)[0] == 401
        assert srv.get("/version")[0] == 200
        assert srv.kubeconfig.read_text() != copy
    finally:
        srv.stop()


def test_record_flags() -> None:
    from streamsrv.cli import NO_RATE_BOUND, build_parser, parse_duration, parse_size, record_config

    assert parse_duration("30d") == 30 * 86400 and parse_duration("90m") == 5400
    assert parse_duration("45") == 45 and parse_duration("0") == 0
    assert parse_size("1G") == 1 << 30 and parse_size("500MiB") == 500 << 20
    assert parse_size("64k") == 64 << 10 and parse_size("123") == 123
    for bad in ("x", "-1d", "1y"):
        with pytest.raises(Exception, match="duration"):
            parse_duration(bad)
    for bad in ("lots", "-5M"):
        with pytest.raises(Exception, match="size"):
            parse_size(bad)
    parser = build_parser()
    assert record_config(parser.parse_args(["serve"])) is None
    flags = ["--record", "rec", "--record-input", "--record-max-age", "7d",
             "--record-max-size", "10G", "--record-max-rate", "0"]  # fmt: skip
    args = parser.parse_args(["serve", *flags])
    cfg = record_config(args)
    assert cfg is not None and cfg.directory.is_absolute() and cfg.record_input
    assert (cfg.max_age, cfg.max_bytes, cfg.max_rate) == (7 * 86400, 10 << 30, NO_RATE_BOUND)
    cri = record_config(parser.parse_args(["cri", "--record", "/r"]))
    assert cri is not None and cri.max_rate == 1 << 20 and not cri.record_input
    r = subprocess.run([sys.executable, "-m", "streamsrv", "serve", "--record-max-age", "soon"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and "not a duration: 'soon'" in r.stderr
