"""One CRI scenario suite, run unchanged against containerd's CRI plugin (the Go reference) and
against `streamsrv cri` on the Docker and the process runtime (docs/cri.md lists every intended
difference; the tests name them where they branch).

Each scenario drives the endpoint over gRPC with :class:`streamsrv.cri.client.CriClient`, as a
kubelet would, and checks what the runtime did from the outside (ExecSync in the containers,
the log files on disk).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from streamsrv.cri import api_pb2 as pb
from streamsrv.cri.client import CriClient, CriError
from streamsrv.protocol.crilog import parse_line
from tests.conftest import require_docker
from tests.cri_env import CriTarget, cri_target

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

KINDS = ["containerd", "docker", "process", "streamsrv-containerd"]


@pytest.fixture(scope="module", params=KINDS)
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CriTarget]:  # noqa: E501
    require_docker()
    directory = tmp_path_factory.mktemp(f"cri-{request.param}")
    with cri_target(request.param, directory) as t:
        yield t


@pytest.fixture
async def cri(target: CriTarget) -> AsyncIterator[CriClient]:
    async with CriClient(target.endpoint, timeout=60) as client:
        if target.kind == "process":  # its images are names it must have been asked to pull
            await client.pull_image(target.image)
        yield client


class Pods:
    """Sandboxes a test made, all removed after it (and checked gone)."""

    def __init__(self, client: CriClient, target: CriTarget) -> None:
        self.client = client
        self.target = target
        self.sandboxes: list[str] = []

    def config(
        self,
        name: str = "",
        *,
        network: int = pb.POD,
        pid: int = pb.POD,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        log_directory: str = "",
        attempt: int = 0,
    ) -> pb.PodSandboxConfig:
        cfg = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(
                name=name or f"pod-{uuid.uuid4().hex[:8]}",
                uid=str(uuid.uuid4()),
                namespace="scenario",
                attempt=attempt,
            ),
            hostname="" if network == pb.NODE else "scenario",  # runc: no UTS ns of its own
            log_directory=log_directory,
            labels=labels or {},
            annotations=annotations or {},
        )
        opts = cfg.linux.security_context.namespace_options
        opts.network, opts.pid, opts.ipc = network, pid, pb.POD  # type: ignore[assignment]
        return cfg

    async def run(self, cfg: pb.PodSandboxConfig | None = None) -> tuple[str, pb.PodSandboxConfig]:
        cfg = cfg or self.config()
        sid = await self.client.run_pod_sandbox(cfg)
        self.sandboxes.append(sid)
        return sid, cfg

    def container(
        self,
        name: str,
        cmd: list[str],
        *,
        pid: int = pb.POD,
        network: int = pb.POD,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        log_path: str = "",
        mounts: list[pb.Mount] | None = None,
        env: dict[str, str] | None = None,
    ) -> pb.ContainerConfig:
        cfg = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name),
            image=pb.ImageSpec(image=self.target.image),
            command=cmd,
            labels=labels or {},
            annotations=annotations or {},
            log_path=log_path,
            mounts=mounts or [],
            envs=[pb.KeyValue(key=k, value=v.encode()) for k, v in (env or {}).items()],
        )
        opts = cfg.linux.security_context.namespace_options
        opts.network, opts.pid, opts.ipc = network, pid, pb.POD  # type: ignore[assignment]
        return cfg

    async def start(self, sid: str, sandbox: pb.PodSandboxConfig, cfg: pb.ContainerConfig) -> str:
        cid = await self.client.create_container(sid, cfg, sandbox)
        await self.client.start_container(cid)
        return cid

    async def cleanup(self) -> None:
        for sid in self.sandboxes:
            with contextlib.suppress(CriError):
                await self.client.stop_pod_sandbox(sid)
            await self.client.remove_pod_sandbox(sid)
        left = {s.id for s in await self.client.list_pod_sandbox()} & set(self.sandboxes)
        assert not left, f"sandboxes left behind: {left}"
        found = await self.client.list_containers()
        assert not [c for c in found if c.pod_sandbox_id in self.sandboxes]


@pytest.fixture
async def pods(cri: CriClient, target: CriTarget) -> AsyncIterator[Pods]:
    p = Pods(cri, target)
    try:
        yield p
    finally:
        await p.cleanup()


async def wait_state(
    client: CriClient, cid: str, state: int, bound: float = 60
) -> pb.ContainerStatus:
    """The container's status once it reaches ``state`` (a generous hang bound)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while True:
        status = (await client.container_status(cid)).status
        if status.state == state or loop.time() > deadline:
            return status
        await asyncio.sleep(0.1)


async def sh(client: CriClient, cid: str, script: str) -> pb.ExecSyncResponse:
    return await client.exec_sync(cid, ["sh", "-c", script], timeout=30)


def code_of(exc: pytest.ExceptionInfo[CriError]) -> str:
    return exc.value.code


# ------------------------------------------------------------------------------------ runtime


async def test_version_and_status(cri: CriClient, target: CriTarget) -> None:
    v = await cri.version()
    assert v.runtime_api_version == "v1"
    assert v.runtime_name == ("containerd" if target.kind == "containerd" else "streamsrv")
    status = await cri.status()
    conditions = {c.type: c.status for c in status.status.conditions}
    assert conditions["RuntimeReady"] is True
    assert "NetworkReady" in conditions


# ---------------------------------------------------------------------------------- sandboxes


async def test_sandbox_lifecycle_and_round_trip(pods: Pods, cri: CriClient) -> None:
    labels = {"app": "web", "tier": "front", "io.example/long": "x" * 200}
    annotations = {"note": "ünïcödé ✓", "empty": "", "json": '{"a": [1, 2]}'}
    cfg = pods.config(labels=labels, annotations=annotations, attempt=2)
    before = asyncio.get_running_loop().time()
    sid, _ = await pods.run(cfg)
    status = (await cri.pod_sandbox_status(sid)).status
    assert status.id == sid
    assert status.state == pb.SANDBOX_READY
    assert status.metadata == cfg.metadata
    assert dict(status.labels) == labels
    assert dict(status.annotations) == annotations
    assert status.created_at > 1_600_000_000 * 10**9  # nanoseconds since the epoch
    assert asyncio.get_running_loop().time() - before < 120

    # filters: id (also a unique prefix), state, labels
    assert [s.id for s in await cri.list_pod_sandbox(pb.PodSandboxFilter(id=sid))] == [sid]
    assert [s.id for s in await cri.list_pod_sandbox(pb.PodSandboxFilter(id=sid[:12]))] == [sid]
    ready = pb.PodSandboxFilter(state=pb.PodSandboxStateValue(state=pb.SANDBOX_READY))
    assert sid in [s.id for s in await cri.list_pod_sandbox(ready)]
    sel = pb.PodSandboxFilter(label_selector={"app": "web", "tier": "front"})
    assert [s.id for s in await cri.list_pod_sandbox(sel)] == [sid]
    miss = pb.PodSandboxFilter(label_selector={"app": "web", "tier": "back"})
    assert sid not in [s.id for s in await cri.list_pod_sandbox(miss)]
    [listed] = await cri.list_pod_sandbox(pb.PodSandboxFilter(id=sid))
    assert dict(listed.annotations) == annotations and listed.metadata == cfg.metadata

    # the same metadata again is refused while the first exists
    with pytest.raises(CriError):
        await cri.run_pod_sandbox(cfg)

    await cri.stop_pod_sandbox(sid)
    assert (await cri.pod_sandbox_status(sid)).status.state == pb.SANDBOX_NOTREADY
    notready = pb.PodSandboxFilter(state=pb.PodSandboxStateValue(state=pb.SANDBOX_NOTREADY))
    assert sid in [s.id for s in await cri.list_pod_sandbox(notready)]
    await cri.stop_pod_sandbox(sid)  # again: fine
    await cri.remove_pod_sandbox(sid)
    await cri.remove_pod_sandbox(sid)  # again: fine (CRI: idempotent)
    with pytest.raises(CriError) as err:
        await cri.pod_sandbox_status(sid)
    assert code_of(err) == "NOT_FOUND"
    assert await cri.list_pod_sandbox(pb.PodSandboxFilter(id=sid)) == []


async def test_host_network_sandbox(pods: Pods, cri: CriClient, target: CriTarget) -> None:
    sid, cfg = await pods.run(pods.config(network=pb.NODE))
    status = (await cri.pod_sandbox_status(sid)).status
    assert status.linux.namespaces.options.network == pb.NODE
    assert status.network.ip == "" or target.kind == "containerd"
    cid = await pods.start(sid, cfg, pods.container("c", ["sleep", "3600"], network=pb.NODE))
    # the host's loopback interface, seen from the container: ours
    r = await sh(cri, cid, "cat /proc/net/dev")
    assert r.exit_code == 0 and b"lo:" in r.stdout


# ---------------------------------------------------------------------------------- containers


async def test_container_lifecycle(pods: Pods, cri: CriClient) -> None:
    sid, scfg = await pods.run()
    labels, annotations = {"role": "main", "k": "v"}, {"a": "1", "b": "ü"}
    cfg = pods.container(
        "main", ["sleep", "3600"], labels=labels, annotations=annotations, env={"GREETING": "hi"}
    )
    cid = await cri.create_container(sid, cfg, scfg)
    status = (await cri.container_status(cid)).status
    assert status.state == pb.CONTAINER_CREATED
    assert status.metadata == cfg.metadata
    assert dict(status.labels) == labels and dict(status.annotations) == annotations
    assert status.created_at > 0 and status.started_at == 0
    await cri.start_container(cid)
    status = (await cri.container_status(cid)).status
    assert status.state == pb.CONTAINER_RUNNING and status.started_at >= status.created_at
    r = await sh(cri, cid, 'echo "$GREETING"')
    assert r.stdout == b"hi\n"

    by_sandbox = pb.ContainerFilter(pod_sandbox_id=sid)
    assert [c.id for c in await cri.list_containers(by_sandbox)] == [cid]
    running = pb.ContainerFilter(
        pod_sandbox_id=sid, state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING)
    )
    assert [c.id for c in await cri.list_containers(running)] == [cid]
    sel = pb.ContainerFilter(label_selector={"role": "main"})
    assert cid in [c.id for c in await cri.list_containers(sel)]
    assert cid not in [
        c.id for c in await cri.list_containers(pb.ContainerFilter(label_selector={"role": "x"}))
    ]
    [listed] = await cri.list_containers(pb.ContainerFilter(id=cid[:12]))
    assert listed.id == cid and listed.pod_sandbox_id == sid and dict(listed.labels) == labels

    await cri.stop_container(cid, 2)
    status = await wait_state(cri, cid, pb.CONTAINER_EXITED)
    assert status.state == pb.CONTAINER_EXITED
    assert status.finished_at >= status.started_at > 0
    await cri.stop_container(cid, 2)  # stopping a stopped container: fine
    await cri.remove_container(cid)
    await cri.remove_container(cid)  # again: fine
    with pytest.raises(CriError) as err:
        await cri.container_status(cid)
    assert code_of(err) == "NOT_FOUND"


async def test_exit_code_and_reason(pods: Pods, cri: CriClient) -> None:
    sid, scfg = await pods.run()
    ok = await pods.start(sid, scfg, pods.container("ok", ["sh", "-c", "exit 0"]))
    bad = await pods.start(sid, scfg, pods.container("bad", ["sh", "-c", "exit 3"]))
    s_ok = await wait_state(cri, ok, pb.CONTAINER_EXITED)
    s_bad = await wait_state(cri, bad, pb.CONTAINER_EXITED)
    assert (s_ok.exit_code, s_ok.reason) == (0, "Completed")
    assert (s_bad.exit_code, s_bad.reason) == (3, "Error")
    exited = pb.ContainerFilter(
        pod_sandbox_id=sid, state=pb.ContainerStateValue(state=pb.CONTAINER_EXITED)
    )
    assert {c.id for c in await cri.list_containers(exited)} == {ok, bad}


async def test_exec_sync(pods: Pods, cri: CriClient) -> None:
    sid, scfg = await pods.run()
    cid = await pods.start(sid, scfg, pods.container("main", ["sleep", "3600"]))
    r = await sh(cri, cid, "echo out; echo err >&2; exit 7")
    assert (r.stdout, r.stderr, r.exit_code) == (b"out\n", b"err\n", 7)
    big = await sh(cri, cid, "head -c 3000000 /dev/zero")
    assert big.stdout == b"\0" * 3_000_000 and big.exit_code == 0
    with pytest.raises(CriError) as err:
        await cri.exec_sync(cid, ["sleep", "30"], timeout=1)
    assert code_of(err) == "DEADLINE_EXCEEDED"
    missing = await cri.exec_sync(cid, ["sh", "-c", "exec /no/such/program"], timeout=10)
    assert missing.exit_code == 127


# ---------------------------------------------------------------------------------- namespaces


async def test_pid_namespace_pod_and_container(
    pods: Pods, cri: CriClient, target: CriTarget
) -> None:
    marker = f"sleep {100000 + uuid.uuid4().int % 800000}"
    sid, scfg = await pods.run()
    a = await pods.start(sid, scfg, pods.container("a", marker.split()))
    b = await pods.start(sid, scfg, pods.container("b", ["sleep", "3600"]))
    ps = await sh(cri, b, "ps -o args")
    assert marker.encode() in ps.stdout  # b sees a's process (pid POD)

    if target.kind == "process":  # docs/cri.md: a process cannot get a pid namespace of its own
        with pytest.raises(CriError) as err:
            await cri.create_container(
                sid, pods.container("own", ["sleep", "5"], pid=pb.CONTAINER), scfg
            )
        assert code_of(err) == "INVALID_ARGUMENT"
        return
    own = await pods.start(sid, scfg, pods.container("own", ["sleep", "3600"], pid=pb.CONTAINER))
    mine = await sh(cri, own, "ps -o args")
    assert mine.exit_code == 0
    assert marker.encode() not in mine.stdout
    assert (await sh(cri, own, "echo $$")).stdout != b""
    del a


async def test_localhost_and_ipc_shared(pods: Pods, cri: CriClient, target: CriTarget) -> None:
    port = 20000 + uuid.uuid4().int % 20000
    sid, scfg = await pods.run()
    web = await pods.start(
        sid,
        scfg,
        pods.container(
            "web",
            ["sh", "-c", f"mkdir -p /tmp/w && echo hello-{port} > /tmp/w/index.html && "
             f"exec busybox httpd -f -p 127.0.0.1:{port} -h /tmp/w"],
        ),
    )  # fmt: skip
    client = await pods.start(sid, scfg, pods.container("client", ["sleep", "3600"]))
    got = b""
    for _ in range(100):
        r = await sh(cri, client, f"busybox wget -qO- http://127.0.0.1:{port}/index.html")
        got = r.stdout
        if r.exit_code == 0:
            break
        await asyncio.sleep(0.1)
    assert got == f"hello-{port}\n".encode()
    name = f"shm-{port}"
    assert (await sh(cri, web, f"echo shared > /dev/shm/{name}")).exit_code == 0
    assert (await sh(cri, client, f"cat /dev/shm/{name}")).stdout == b"shared\n"
    if target.kind == "process":
        await sh(cri, client, f"rm -f /dev/shm/{name}")


# ---------------------------------------------------------------------------------- logs


async def test_log_file_in_cri_format(pods: Pods, cri: CriClient, tmp_path: Path) -> None:
    logs = tmp_path / "pod-logs"
    logs.mkdir()
    sid, scfg = await pods.run(pods.config(log_directory=str(logs)))
    script = "echo one; echo two >&2; echo three; printf tail"
    cid = await pods.start(
        sid, scfg, pods.container("talker", ["sh", "-c", script], log_path="talker/0.log")
    )
    status = await wait_state(cri, cid, pb.CONTAINER_EXITED)
    assert status.log_path == str(logs / "talker" / "0.log")
    path = logs / "talker" / "0.log"
    lines: list[tuple[str, bool, bytes]] = []
    for _ in range(100):  # the log may be written just after the exit is seen
        if path.exists():
            lines = [
                (stream, partial, content)
                for _, stream, partial, content in (
                    parse_line(x) for x in path.read_bytes().splitlines(keepends=True)
                )
            ]
            if len(lines) >= 4:
                break
        await asyncio.sleep(0.1)
    stdout = [(p, c) for s, p, c in lines if s == "stdout"]
    stderr = [(p, c) for s, p, c in lines if s == "stderr"]
    assert stderr == [(False, b"two")]
    assert stdout[:2] == [(False, b"one"), (False, b"three")]
    assert b"".join(c for _, c in stdout[2:]) == b"tail"
    for line in path.read_bytes().splitlines():
        assert re.match(
            rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d) std(out|err) [FP] ", line
        )


# ---------------------------------------------------------------------------------- mounts


async def test_mounts(pods: Pods, cri: CriClient, target: CriTarget, tmp_path: Path) -> None:
    host = tmp_path / "shared"
    host.mkdir()
    (host / "in.txt").write_text("from the host\n")
    ro = tmp_path / "ro"
    ro.mkdir()
    made = tmp_path / "made-by-runtime"
    mounts = [
        pb.Mount(container_path="/data", host_path=str(host)),
        pb.Mount(container_path="/ro", host_path=str(ro), readonly=True),
        pb.Mount(container_path="/made", host_path=str(made)),
    ]
    sid, scfg = await pods.run()
    cfg = pods.container("m", ["sleep", "3600"], mounts=mounts)
    if target.kind == "process":  # docs/cri.md: a process has no mount namespace to mount into
        with pytest.raises(CriError) as err:
            await cri.create_container(sid, cfg, scfg)
        assert code_of(err) == "INVALID_ARGUMENT"
        assert await cri.list_containers(pb.ContainerFilter(pod_sandbox_id=sid)) == []
        return
    cid = await pods.start(sid, scfg, cfg)
    assert (await sh(cri, cid, "cat /data/in.txt")).stdout == b"from the host\n"
    assert (await sh(cri, cid, "echo back > /data/out.txt")).exit_code == 0
    assert (host / "out.txt").read_text() == "back\n"
    assert (await sh(cri, cid, "touch /ro/x")).exit_code != 0
    assert not (ro / "x").exists()
    assert made.is_dir()
    status = (await cri.container_status(cid)).status
    assert [(m.container_path, m.host_path, m.readonly) for m in status.mounts] == [
        (m.container_path, m.host_path, m.readonly) for m in mounts
    ]


# ---------------------------------------------------------------------------------- images


async def test_images(cri: CriClient, target: CriTarget) -> None:
    status = await cri.image_status(target.image)
    assert status.HasField("image")
    image = status.image
    assert image.id.startswith("sha256:")
    assert any(t.endswith(target.image.split("/", 1)[-1]) for t in image.repo_tags)
    assert image.id in [i.id for i in await cri.list_images()]
    by_id = await cri.image_status(image.id)
    assert by_id.image.id == image.id
    filtered = await cri.list_images(pb.ImageFilter(image=pb.ImageSpec(image=target.image)))
    assert image.id in [i.id for i in filtered]  # containerd 1.6 ignores the filter
    absent = await cri.image_status("streamsrv/no-such-image:never")
    assert not absent.HasField("image")
    await cri.remove_image("streamsrv/no-such-image:never")  # absent: fine
    fs = await cri.image_fs_info()
    assert len(fs.image_filesystems) >= 1 and fs.image_filesystems[0].fs_id.mountpoint


async def test_pull_that_cannot_succeed(cri: CriClient, target: CriTarget) -> None:
    with pytest.raises(CriError) as err:
        await cri.pull_image("NOT A valid//reference::", deadline=120)
    assert err.value.code in ("INVALID_ARGUMENT", "UNKNOWN", "NOT_FOUND")
    if target.kind != "process":  # docs/cri.md: the process runtime pulls nothing
        with pytest.raises(CriError):
            await cri.pull_image("127.0.0.1:1/streamsrv/absent:1", deadline=120)
    assert not (await cri.image_status("127.0.0.1:1/streamsrv/absent:1")).HasField("image")


# ---------------------------------------------------------------------------------- bad input


async def test_unknown_and_wrong_ids(pods: Pods, cri: CriClient) -> None:
    sid, scfg = await pods.run()
    cid = await pods.start(sid, scfg, pods.container("main", ["sleep", "3600"]))
    calls: list[Any] = [
        cri.container_status("no-such-container"),
        cri.pod_sandbox_status("no-such-sandbox"),
        cri.start_container("no-such-container"),
        cri.container_status(sid),  # a sandbox id where a container id belongs
        cri.start_container(sid),
        cri.exec_sync(sid, ["true"]),
        cri.pod_sandbox_status(cid),  # and the other way round
        cri.create_container("no-such-sandbox", pods.container("x", ["true"]), scfg),
        cri.create_container(cid, pods.container("x", ["true"]), scfg),
    ]
    for call in calls:
        with pytest.raises(CriError) as err:
            await call
        assert code_of(err) == "NOT_FOUND", err.value
    found = await cri.list_containers(pb.ContainerFilter(pod_sandbox_id=sid))
    assert [c.id for c in found] == [cid]


async def test_bad_configs_leave_nothing(pods: Pods, cri: CriClient) -> None:
    before = {s.id for s in await cri.list_pod_sandbox()}
    with pytest.raises(CriError):
        await cri.run_pod_sandbox(pb.PodSandboxConfig())  # no metadata
    assert {s.id for s in await cri.list_pod_sandbox()} == before
    sid, scfg = await pods.run()
    no_meta = pb.ContainerConfig(image=pb.ImageSpec(image=pods.target.image), command=["true"])
    with pytest.raises(CriError):
        await cri.create_container(sid, no_meta, scfg)
    absent = pods.container("x", ["true"])
    absent.image.image = "streamsrv/no-such-image:never"
    with pytest.raises(CriError) as err:
        await cri.create_container(sid, absent, scfg)
    assert code_of(err) == "NOT_FOUND"
    assert await cri.list_containers(pb.ContainerFilter(pod_sandbox_id=sid)) == []
    with pytest.raises(CriError):  # a name already taken in the sandbox
        await pods.start(sid, scfg, pods.container("same", ["sleep", "3600"]))
        await cri.create_container(sid, pods.container("same", ["sleep", "3600"]), scfg)
    assert len(await cri.list_containers(pb.ContainerFilter(pod_sandbox_id=sid))) == 1


async def test_stream_urls(pods: Pods, cri: CriClient) -> None:
    sid, scfg = await pods.run()
    cid = await pods.start(sid, scfg, pods.container("main", ["sleep", "3600"]))
    url = await cri.exec(pb.ExecRequest(container_id=cid, cmd=["true"], stdout=True))
    assert re.match(r"^https?://[^/]+/exec/\S+$", url), url
    url = await cri.attach(pb.AttachRequest(container_id=cid, stdout=True))
    assert re.match(r"^https?://[^/]+/attach/\S+$", url), url
    url = await cri.port_forward(sid, [80])
    assert re.match(r"^https?://[^/]+/portforward/\S+$", url), url
    with pytest.raises(CriError) as err:
        await cri.exec(pb.ExecRequest(container_id="no-such", cmd=["true"], stdout=True))
    assert code_of(err) == "NOT_FOUND"


async def test_unimplemented_names_the_method(cri: CriClient, target: CriTarget) -> None:
    """A method we do not serve is UNIMPLEMENTED naming it; containerd serves this one (its
    answer for an unknown container is some other error), and nobody serves a made-up one."""
    with pytest.raises(CriError) as err:
        await cri.call(
            "runtime.v1.RuntimeService",
            "ReopenContainerLog",
            pb.ContainerStatusRequest(container_id="x"),  # field 1: container_id, as there
            pb.ContainerStatusResponse,
        )
    if target.is_streamsrv:
        assert code_of(err) == "UNIMPLEMENTED"
        assert "ReopenContainerLog" in err.value.details
    else:
        assert code_of(err) != "UNIMPLEMENTED"
    with pytest.raises(CriError) as err:
        await cri.call(
            "runtime.v1.RuntimeService", "NoSuchMethod", pb.VersionRequest(), pb.VersionResponse
        )
    assert code_of(err) == "UNIMPLEMENTED"
    if target.is_streamsrv:
        assert "NoSuchMethod" in err.value.details


async def test_concurrent_creates(pods: Pods, cri: CriClient) -> None:
    """Five different sandboxes at once all run; one name twice at once runs once."""
    configs = [pods.config() for _ in range(5)]
    ids = await asyncio.gather(*(cri.run_pod_sandbox(c) for c in configs))
    pods.sandboxes.extend(ids)
    assert len(set(ids)) == 5
    same = pods.config()
    results = await asyncio.gather(
        cri.run_pod_sandbox(same), cri.run_pod_sandbox(same), return_exceptions=True
    )
    made = [r for r in results if isinstance(r, str)]
    pods.sandboxes.extend(made)
    assert len(made) == 1, results
    assert isinstance(next(r for r in results if not isinstance(r, str)), CriError)
    listed = await cri.list_pod_sandbox()
    assert [s.id for s in listed if s.metadata == same.metadata] == made


async def test_exec_sync_output_past_its_bound(
    pods: Pods, cri: CriClient, target: CriTarget
) -> None:
    """24 MB of output, 12 on each stream: more than one answer can carry to a kubelet (16 MiB
    a message). Ours keeps the first EXEC_SYNC_OUTPUT bytes of the two together and answers;
    the server goes on serving."""
    from streamsrv.cri.server import EXEC_SYNC_OUTPUT

    sid, scfg = await pods.run()
    cid = await pods.start(sid, scfg, pods.container("main", ["sleep", "3600"]))
    script = "head -c 12000000 /dev/zero; head -c 12000000 /dev/zero >&2; exit 4"
    if target.is_streamsrv:
        r = await sh(cri, cid, script)
        assert r.exit_code == 4
        assert len(r.stdout) + len(r.stderr) == EXEC_SYNC_OUTPUT
        assert r.stdout == b"\0" * 12_000_000 and set(r.stderr) == {0}
    else:  # containerd 1.6 answers all of it, which no 16 MiB client can take
        with pytest.raises(CriError) as err:
            await sh(cri, cid, script)
        assert code_of(err) == "RESOURCE_EXHAUSTED"
    assert (await sh(cri, cid, "echo still")).stdout == b"still\n"
