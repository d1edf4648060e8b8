"""Pod volumes on the real Docker engine: emptyDir shared by a pod's containers, readOnly,
subPath, hostPath with its type checks, and nothing left behind (docs/architecture.md,
"Pod volumes")."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import docker
import pytest

from streamsrv.podmanager import PodManager
from streamsrv.pods import InvalidPod, parse_pod
from streamsrv.runtime.docker import DockerRuntime
from streamsrv.runtime.volumes import VolumeHost
from tests.conftest import (
    PAUSE,
    engine_pod_containers,
    engine_run,
    engine_sh,
    pod_manifest,
    sleeper,
    unique,
)

pytestmark = pytest.mark.docker


@pytest.fixture
async def vruntime(docker_engine: None, tmp_path: Path) -> AsyncIterator[DockerRuntime]:
    rt = DockerRuntime(pause_image=PAUSE, volumes=VolumeHost(tmp_path / "volumes"))
    yield rt
    await rt.close()


def with_mounts(container: dict[str, Any], *mounts: dict[str, Any]) -> dict[str, Any]:
    return {**container, "volumeMounts": list(mounts)}


def mountinfo() -> str:
    return Path("/proc/self/mountinfo").read_text()


async def test_empty_dir_is_shared_by_the_pods_containers_and_removed_with_it(
    vruntime: DockerRuntime, tmp_path: Path
) -> None:
    name = unique("vol")
    manifest = pod_manifest(
        name,
        with_mounts(sleeper("writer"), {"name": "data", "mountPath": "/data"}),
        with_mounts(sleeper("reader"), {"name": "data", "mountPath": "/shared", "readOnly": True}),
        volumes=[{"name": "data", "emptyDir": {}}],
    )
    spec = parse_pod(manifest)
    manager = PodManager(vruntime)
    pod = await manager.create(spec)
    writer, reader = pod.container_id("writer"), pod.container_id("reader")
    assert writer and reader
    await engine_run(
        writer, "echo written-by-writer > /data/note && mkdir -p /data/d && echo x > /data/d/y"
    )
    assert await engine_run(reader, "cat /shared/note") == "written-by-writer\n"
    # readOnly: the reader cannot write, the writer still can.
    code, out = await asyncio.to_thread(engine_sh, reader, "echo no > /shared/other")
    assert code != 0 and "Read-only file system" in out
    host_dir = tmp_path / "volumes" / spec.uid / "data"
    assert (host_dir / "note").read_text() == "written-by-writer\n"
    assert oct(host_dir.stat().st_mode & 0o777) == "0o777"

    await manager.delete("default", name, grace=0)
    assert not (tmp_path / "volumes" / spec.uid).exists()


async def test_memory_empty_dir_is_one_tmpfs_for_the_whole_pod(
    vruntime: DockerRuntime, tmp_path: Path
) -> None:
    name = unique("mem")
    manifest = pod_manifest(
        name,
        with_mounts(sleeper("a"), {"name": "m", "mountPath": "/m"}),
        with_mounts(sleeper("b"), {"name": "m", "mountPath": "/m"}),
        volumes=[{"name": "m", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}}],
    )
    spec = parse_pod(manifest)
    manager = PodManager(vruntime)
    pod = await manager.create(spec)
    a, b = pod.container_id("a"), pod.container_id("b")
    assert a and b
    mounts = await engine_run(a, "grep ' /m ' /proc/mounts")
    assert mounts.split()[2] == "tmpfs", mounts
    assert "size=8192k" in mounts, mounts
    await engine_run(a, "echo in-memory > /m/f")
    assert await engine_run(b, "cat /m/f") == "in-memory\n"
    host_dir = tmp_path / "volumes" / spec.uid / "m"
    assert spec.uid in mountinfo() and host_dir.is_dir()

    await manager.delete("default", name, grace=0)
    assert spec.uid not in mountinfo()
    assert not (tmp_path / "volumes" / spec.uid).exists()


async def test_sub_path_mounts_one_directory_of_the_volume(vruntime: DockerRuntime) -> None:
    name = unique("sub")
    manifest = pod_manifest(
        name,
        with_mounts(sleeper("whole"), {"name": "data", "mountPath": "/all"}),
        with_mounts(sleeper("part"), {"name": "data", "mountPath": "/logs", "subPath": "app/logs"}),
        volumes=[{"name": "data", "emptyDir": {}}],
    )
    pod = await PodManager(vruntime).create(parse_pod(manifest))
    whole, part = pod.container_id("whole"), pod.container_id("part")
    assert whole and part
    await engine_run(part, "echo from-part > /logs/l.txt")
    assert await engine_run(whole, "cat /all/app/logs/l.txt") == "from-part\n"
    await engine_run(whole, "echo top > /all/top.txt")
    code, _ = await asyncio.to_thread(engine_sh, part, "test -e /logs/top.txt")
    assert code != 0  # the part container sees only its subPath


async def test_host_path_types(vruntime: DockerRuntime, tmp_path: Path) -> None:
    existing_dir = tmp_path / "hp-dir"
    existing_dir.mkdir()
    (existing_dir / "hello").write_text("from the host\n")
    existing_file = tmp_path / "hp-file"
    existing_file.write_text("file on host\n")
    to_create_dir = tmp_path / "made" / "dir"
    to_create_file = tmp_path / "made-file"
    sock_path = tmp_path / "hp.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock_path))
    try:
        volumes = [
            {"name": "d", "hostPath": {"path": str(existing_dir), "type": "Directory"}},
            {"name": "f", "hostPath": {"path": str(existing_file), "type": "File"}},
            {"name": "dc", "hostPath": {"path": str(to_create_dir), "type": "DirectoryOrCreate"}},
            {"name": "fc", "hostPath": {"path": str(to_create_file), "type": "FileOrCreate"}},
            {"name": "s", "hostPath": {"path": str(sock_path), "type": "Socket"}},
            {"name": "any", "hostPath": {"path": str(existing_dir)}},
        ]
        mounts: list[dict[str, Any]] = [
            {"name": "d", "mountPath": "/d"},
            {"name": "f", "mountPath": "/f", "readOnly": True},
            {"name": "dc", "mountPath": "/dc"},
            {"name": "fc", "mountPath": "/fc"},
            {"name": "s", "mountPath": "/s.sock"},
            {"name": "any", "mountPath": "/any", "subPath": "sub"},
        ]
        name = unique("hp")
        pod = await PodManager(vruntime).create(
            parse_pod(pod_manifest(name, with_mounts(sleeper(), *mounts), volumes=volumes))
        )
        cid = pod.container_id("main")
        assert cid
        assert await engine_run(cid, "cat /d/hello /f") == "from the host\nfile on host\n"
        assert to_create_dir.is_dir() and oct(to_create_dir.stat().st_mode & 0o777) == "0o755"
        assert to_create_file.is_file() and to_create_file.stat().st_size == 0
        assert oct(to_create_file.stat().st_mode & 0o777) == "0o644"
        await engine_run(cid, "echo via-pod > /fc && test -S /s.sock && echo z > /any/z")
        assert to_create_file.read_text() == "via-pod\n"
        assert (existing_dir / "sub" / "z").read_text() == "z\n"  # subPath made on the host
    finally:
        listener.close()


@pytest.mark.parametrize(
    ("kind", "make", "words"),
    [
        ("Directory", None, "does not exist"),
        ("Directory", "file", "is not a directory"),
        ("File", "dir", "is not a file"),
        ("Socket", "file", "is not a socket file"),
        ("CharDevice", "file", "is not a character device"),
        ("BlockDevice", "file", "is not a block device"),
        ("DirectoryOrCreate", "file", "is not a directory"),
        ("FileOrCreate", "dir", "is not a file"),
        ("", None, "does not exist"),
    ],
)
async def test_a_failed_host_path_check_refuses_the_pod_and_leaves_nothing(
    vruntime: DockerRuntime, tmp_path: Path, kind: str, make: str | None, words: str
) -> None:
    path = tmp_path / "target"
    if make == "file":
        path.write_text("x")
    elif make == "dir":
        path.mkdir()
    name = unique("hpbad")
    manifest = pod_manifest(
        name,
        with_mounts(sleeper(), {"name": "e", "mountPath": "/e"}, {"name": "h", "mountPath": "/h"}),
        volumes=[
            {"name": "e", "emptyDir": {}},  # made before the check fails: must go again
            {"name": "h", "hostPath": {"path": str(path), "type": kind}},
        ],
    )
    spec = parse_pod(manifest)
    with pytest.raises(InvalidPod) as caught:
        await PodManager(vruntime).create(spec)
    assert caught.value.causes[0][0] == "spec.volumes[1].hostPath.path"
    assert words in caught.value.causes[0][1], caught.value.causes
    assert await asyncio.to_thread(engine_pod_containers, name) == []
    assert not (tmp_path / "volumes" / spec.uid).exists()


def test_a_sub_path_that_escapes_its_volume_through_a_symlink_is_refused(tmp_path: Path) -> None:
    host = VolumeHost(tmp_path / "volumes")
    spec = parse_pod(
        pod_manifest(
            "esc",
            with_mounts(sleeper(), {"name": "data", "mountPath": "/x", "subPath": "link/etc"}),
            volumes=[{"name": "data", "emptyDir": {}}],
        )
    )
    host.prepare(spec)
    # What a container of the pod could have left in the shared directory.
    (tmp_path / "volumes" / spec.uid / "data" / "link").symlink_to("/")
    [container] = spec.containers
    with pytest.raises(InvalidPod) as caught:
        host.mount_source(spec, container, container.volume_mounts[0])
    assert caught.value.causes == [
        (
            "spec.containers[0].volumeMounts[0].subPath",
            'Invalid value: "link/etc": resolves outside its volume',
        )
    ]
    host.remove(spec.uid)
    assert not (tmp_path / "volumes" / spec.uid).exists()


async def test_sweep_removes_the_volumes_of_a_pod_whose_sandbox_is_gone(
    vruntime: DockerRuntime, tmp_path: Path
) -> None:
    keep, lose = unique("keep"), unique("lose")
    manager = PodManager(vruntime)
    specs = {}
    for name in (keep, lose):
        specs[name] = parse_pod(
            pod_manifest(
                name,
                with_mounts(sleeper(), {"name": "v", "mountPath": "/v"}),
                volumes=[{"name": "v", "emptyDir": {}}],
            )
        )
        await manager.create(specs[name])
    lost = await manager.get("default", lose)
    assert lost is not None
    client = docker.from_env()
    try:  # the sandbox removed behind the runtime's back
        client.api.remove_container(lost.sandbox.id, force=True)
    finally:
        client.close()
    _, removed = await vruntime.sweep()
    assert removed == [specs[lose].uid]
    assert (tmp_path / "volumes" / specs[keep].uid / "v").is_dir()
    assert not (tmp_path / "volumes" / specs[lose].uid).exists()


async def test_a_runtime_without_a_volume_directory_refuses_volumes(runtime: DockerRuntime) -> None:
    name = unique("novol")
    spec = parse_pod(
        pod_manifest(
            name,
            with_mounts(sleeper(), {"name": "v", "mountPath": "/v"}),
            volumes=[{"name": "v", "emptyDir": {}}],
        )
    )
    with pytest.raises(InvalidPod, match="no volume directory"):
        await PodManager(runtime).create(spec)
    assert await asyncio.to_thread(engine_pod_containers, name) == []
