"""`streamsrv cri` as a program: its socket, its restarts, and garbage on the wire."""

from __future__ import annotations

import signal
import socket
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest

from streamsrv.cri import api_pb2 as pb
from streamsrv.cri.client import CriClient, CriError
from tests.conftest import BUSYBOX, require_docker
from tests.cri_env import StreamsrvCri, streamsrv_cri


def sandbox(name: str) -> pb.PodSandboxConfig:
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=str(uuid.uuid4()), namespace="d"),
        labels={"kept": "yes"},
        annotations={"note": "ü ✓"},
    )
    cfg.linux.security_context.namespace_options.network = pb.NODE
    return cfg


async def test_socket_is_private_and_urls_are_https(tmp_path: Path) -> None:
    with streamsrv_cri(tmp_path / "s", "process") as srv:
        mode = srv.socket.stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert srv.stream_url.startswith("https://127.0.0.1:")
        async with CriClient(srv.endpoint) as cri:
            assert (await cri.version()).runtime_name == "streamsrv"
    assert not srv.socket.exists()  # removed when it stopped


def test_stale_socket_is_replaced_and_a_live_one_refused(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(state / "cri.sock"))
    stale.close()  # a socket file nobody listens on: what a killed server leaves
    with streamsrv_cri(state, "process") as srv:
        second = subprocess.run(
            [sys.executable, "-m", "streamsrv", "--state-dir", str(tmp_path / "other"), "cri",
             "--listen", srv.endpoint, "--runtime", "process"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 2
        assert "another server is listening" in second.stderr
        assert srv.socket.exists()


@pytest.mark.parametrize("listen", ["tcp://127.0.0.1:9", "relative/cri.sock", "unix://rel.sock"])
def test_only_absolute_unix_sockets(tmp_path: Path, listen: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "streamsrv", "--state-dir", str(tmp_path), "cri",
         "--listen", listen, "--runtime", "process"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    assert "unix" in r.stderr


async def test_garbage_on_the_wire_gets_an_error_and_the_server_goes_on(tmp_path: Path) -> None:
    with streamsrv_cri(tmp_path / "s", "process") as srv:
        async with grpc.aio.insecure_channel(srv.endpoint) as channel:
            raw = channel.unary_unary(
                "/runtime.v1.RuntimeService/RunPodSandbox",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            for junk in (b"\xff\xff\xff\xff", b"\x0a\x05abc", bytes(range(256)) * 64):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await raw(junk, timeout=30)
                assert err.value.code() in (
                    grpc.StatusCode.INTERNAL,
                    grpc.StatusCode.INVALID_ARGUMENT,
                )
        async with CriClient(srv.endpoint) as cri:
            assert (await cri.version()).runtime_api_version == "v1"
            assert await cri.list_pod_sandbox() == []
        assert "Traceback" not in srv.text()


@pytest.mark.docker
async def test_records_survive_a_restart(tmp_path: Path) -> None:
    require_docker()
    srv = StreamsrvCri(tmp_path / "s", "docker")
    srv.start()
    try:
        async with CriClient(srv.endpoint) as cri:
            cfg = sandbox(f"keep-{uuid.uuid4().hex[:6]}")
            sid = await cri.run_pod_sandbox(cfg)
            ccfg = pb.ContainerConfig(
                metadata=pb.ContainerMetadata(name="c", attempt=3),
                image=pb.ImageSpec(image=BUSYBOX),
                command=["sleep", "3600"],
                labels={"x": "1"},
            )
            ccfg.linux.security_context.namespace_options.network = pb.NODE
            cid = await cri.create_container(sid, ccfg, cfg)
            await cri.start_container(cid)
        srv.stop(signal.SIGTERM)
        srv.start()
        async with CriClient(srv.endpoint) as cri:
            status = (await cri.pod_sandbox_status(sid)).status
            assert status.metadata == cfg.metadata
            assert dict(status.annotations) == dict(cfg.annotations)
            c = (await cri.container_status(cid)).status
            assert c.metadata.attempt == 3 and dict(c.labels) == {"x": "1"}
            assert c.state == pb.CONTAINER_RUNNING  # the runtime's containers outlive the server
            await cri.stop_pod_sandbox(sid)
            await cri.remove_pod_sandbox(sid)
            with pytest.raises(CriError):
                await cri.container_status(cid)
    finally:
        srv.stop()
    assert list((tmp_path / "s" / "cri" / "containers").iterdir()) == []
    assert list((tmp_path / "s" / "cri" / "sandboxes").iterdir()) == []


async def test_process_runtime_records_are_dropped_with_its_pods(tmp_path: Path) -> None:
    """The process runtime's pods end with the server: a restart drops their records."""
    srv = StreamsrvCri(tmp_path / "s", "process")
    srv.start()
    try:
        async with CriClient(srv.endpoint) as cri:
            await cri.run_pod_sandbox(sandbox("gone"))
            assert len(await cri.list_pod_sandbox()) == 1
        srv.stop(signal.SIGTERM)
        srv.start()
        async with CriClient(srv.endpoint) as cri:
            assert await cri.list_pod_sandbox() == []
    finally:
        srv.stop()
