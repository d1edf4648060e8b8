"""kubectl's everyday verbs against `streamsrv serve`: logs, events, watch, patch and restarts,
with real kubectl 1.27 and 1.33 on both runtimes (and the official Python client where it has
the call)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch

from tests.conftest import (
    BUSYBOX,
    RUNTIMES,
    Server,
    _remove_everything,
    require_runtime,
    unique,
    until,
)

pytestmark = [pytest.mark.docker, pytest.mark.kubectl]

VERSIONS = ("1.27", "1.33")
HANG = 60.0  # generous: what should take a second or two


@pytest.fixture(scope="module", params=RUNTIMES)
def srv(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Server]:
    runtime = request.param
    require_runtime(runtime)
    if runtime == "docker":
        _remove_everything()
    server = Server(tmp_path_factory.mktemp("everyday") / "state", runtime=runtime)
    server.start()
    yield server
    server.stop()
    if runtime == "docker":
        _remove_everything()


def create(srv: Server, name: str, *containers: dict[str, Any], **spec: Any) -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": list(containers), **spec},
    }
    path = srv.state_dir / f"{name}.json"
    path.write_text(json.dumps(doc))
    r = srv.kubectl("1.33", "create", "-f", str(path))
    assert r.returncode == 0, r.stderr


def sh(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": BUSYBOX, "command": ["sh", "-c", script], **extra}


def pod_json(srv: Server, name: str) -> dict[str, Any]:
    r = srv.kubectl("1.33", "get", "pod", name, "-o", "json")
    assert r.returncode == 0, r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def logs(srv: Server, version: str, *args: str) -> subprocess.CompletedProcess[str]:
    return srv.kubectl(version, "logs", *args, timeout=HANG)


# ------------------------------------------------------------------------------- logs


@pytest.fixture(scope="module")
def chatty(srv: Server) -> str:
    """A pod whose container `a` wrote five lines and one to stderr, and `b` one line."""
    name = unique("logs")
    script = "for i in 1 2 3 4 5; do echo out $i; done; sleep 0.5; echo err >&2; exec sleep 100000"
    create(srv, name, sh("a", script), sh("b", "echo b-line; exec sleep 100000"))
    until(
        "the output is written", lambda: logs(srv, "1.33", name, "-c", "a").stdout.count("\n") == 6
    )
    return name


@pytest.mark.parametrize("version", VERSIONS)
def test_logs_options(srv: Server, chatty: str, version: str) -> None:
    lines = [f"out {i}" for i in range(1, 6)] + ["err"]
    r = logs(srv, version, chatty, "-c", "a")
    assert r.returncode == 0 and r.stdout.splitlines() == lines, r
    assert logs(srv, version, chatty, "-c", "a", "--tail", "2").stdout.splitlines() == lines[-2:]
    assert logs(srv, version, chatty, "-c", "a", "--tail", "0").stdout == ""
    assert logs(srv, version, chatty, "-c", "a", "--limit-bytes", "8").stdout == "out 1\nou"
    assert logs(srv, version, chatty, "-c", "a", "--since", "1h").stdout.splitlines() == lines
    future = "2099-01-01T00:00:00Z"
    assert logs(srv, version, chatty, "-c", "a", f"--since-time={future}").stdout == ""
    stamped = logs(srv, version, chatty, "-c", "a", "--timestamps").stdout.splitlines()
    assert len(stamped) == 6
    for line, text in zip(stamped, lines, strict=True):
        stamp, _, rest = line.partition(" ")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", stamp), line
        assert rest == text
    r = logs(srv, version, chatty, "--all-containers", "--prefix")
    assert r.returncode == 0, r.stderr
    got = set(r.stdout.splitlines())
    assert f"[pod/{chatty}/b] b-line" in got and f"[pod/{chatty}/a] out 3" in got, got


@pytest.mark.parametrize("version", VERSIONS)
def test_logs_errors_say_what_is_missing(srv: Server, chatty: str, version: str) -> None:
    r = logs(srv, version, chatty, "-c", "a", "-p")
    assert r.returncode != 0
    assert f'previous terminated container "a" in pod "{chatty}" not found' in r.stderr, r.stderr
    r = logs(srv, version, chatty, "-c", "nope")
    assert r.returncode != 0
    assert "nope" in r.stderr and chatty in r.stderr, r.stderr
    assert "NotFound): Not Found" not in r.stderr
    r = logs(srv, version, "no-such-pod")
    assert r.returncode != 0 and 'pods "no-such-pod" not found' in r.stderr, r.stderr
    r = logs(srv, version, chatty, "-c", "a", "--tail", "-1")  # kubectl's "everything"
    assert r.returncode == 0 and r.stdout.count("\n") == 6, r


@pytest.mark.parametrize("version", VERSIONS)
def test_logs_follow_ends_with_the_container(srv: Server, version: str) -> None:
    name = unique("follow")
    create(srv, name, sh("main", "for i in 1 2 3; do echo tick $i; sleep 1; done"),
           restartPolicy="Never")  # fmt: skip
    r = srv.kubectl(version, "logs", "-f", name, timeout=HANG)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["tick 1", "tick 2", "tick 3"]
    # The ended container's log is still there.
    until("the pod has ended", lambda: pod_json(srv, name)["status"]["phase"] == "Succeeded")
    assert logs(srv, version, name).stdout.splitlines() == ["tick 1", "tick 2", "tick 3"]


def test_a_follow_the_client_leaves_is_released(srv: Server) -> None:
    name = unique("leave")
    create(srv, name, sh("main", "while true; do echo x; sleep 0.2; done"))
    procs = [
        srv.kubectl_popen(
            "1.33", "logs", "-f", name, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(5)
    ]
    for p in procs:
        assert p.stdout is not None
        assert p.stdout.readline() == b"x\n"
    assert srv.proc is not None
    fds = len(list(Path(f"/proc/{srv.proc.pid}/fd").iterdir()))
    for p in procs:
        p.kill()
        p.communicate()
    until(
        "the followers' files are closed",
        lambda: len(list(Path(f"/proc/{srv.proc.pid}/fd").iterdir())) <= fds - 5,  # type: ignore[union-attr]
    )


# ------------------------------------------------------------------------------- restarts


@pytest.mark.parametrize("version", VERSIONS)
def test_restarts_back_off_and_previous_logs(srv: Server, version: str) -> None:
    name = unique("crash")
    create(
        srv, name, sh("main", "echo run at $(cat /proc/sys/kernel/random/uuid); exit 3")
    )  # restartPolicy Always

    def crash_looping() -> list[str] | None:
        r = srv.kubectl(version, "get", "pod", name, "--no-headers")
        cells = r.stdout.split()
        if len(cells) >= 4 and cells[2] == "CrashLoopBackOff" and cells[3] != "0":
            return cells
        return None

    cells = until("CrashLoopBackOff", crash_looping)
    assert cells[1] == "0/1"
    pod = pod_json(srv, name)
    status = pod["status"]["containerStatuses"][0]
    assert status["restartCount"] >= 1
    assert status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert pod["status"]["phase"] == "Running"
    previous = logs(srv, version, name, "-p")
    current = logs(srv, version, name)
    assert previous.returncode == 0 and current.returncode == 0, (previous, current)
    assert previous.stdout.startswith("run at ") and current.stdout.startswith("run at ")
    assert previous.stdout != current.stdout  # two runs, two files
    r = srv.kubectl(version, "get", "events", "--field-selector", f"involvedObject.name={name}")
    assert "BackOff" in r.stdout and "Back-off restarting failed container main" in r.stdout, r


@pytest.mark.parametrize(("policy", "phase"), [("Never", "Failed"), ("OnFailure", "Running")])
def test_restart_policy_is_applied(srv: Server, policy: str, phase: str) -> None:
    name = unique(policy.lower())
    create(srv, name, sh("main", "exit 1"), restartPolicy=policy)
    time.sleep(2)  # the controller looks every second
    pod = until(
        "the container ran",
        lambda: (p := pod_json(srv, name))["status"]["phase"] != "Pending" and p,
    )
    pod = pod_json(srv, name)
    assert pod["status"]["phase"] == phase
    restarts = pod["status"]["containerStatuses"][0]["restartCount"]
    assert (restarts == 0) if policy == "Never" else (restarts >= 1), pod["status"]


# ------------------------------------------------------------------------------- events


@pytest.mark.parametrize("version", VERSIONS)
def test_events_in_get_and_describe(srv: Server, chatty: str, version: str) -> None:
    r = srv.kubectl(version, "get", "events")
    assert r.returncode == 0, r.stderr
    for reason in ("Scheduled", "Pulled", "Created", "Started"):
        assert re.search(rf"\b{reason}\b.*pod/{chatty}", r.stdout), (reason, r.stdout)
    r = srv.kubectl(version, "describe", "pod", chatty)
    assert r.returncode == 0, r.stderr
    events = r.stdout.split("Events:", 1)[1]
    assert "<none>" not in events.splitlines()[0]
    assert "Started container a" in events and "Started container b" in events, events
    assert f"Successfully assigned default/{chatty} to streamsrv" in events
    r = srv.kubectl(version, "get", "events", "--field-selector", "involvedObject.name=nobody")
    assert r.returncode == 0 and chatty not in r.stdout + r.stderr
    r = srv.kubectl(version, "get", "events", "--field-selector", "bogus=1")
    assert r.returncode != 0 and 'field label not supported: "bogus"' in r.stderr, r.stderr


# ------------------------------------------------------------------------------- watch


@pytest.mark.parametrize("version", VERSIONS)
def test_get_watch_shows_changes(srv: Server, version: str) -> None:
    name = unique("watched")
    proc: subprocess.Popen[str] = subprocess.Popen(
        srv.kubectl_cmd(version, "get", "pods", "-w"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(1)
        create(srv, name, sh("main", "sleep 2; exit 0"), restartPolicy="Never")
        seen: list[str] = []
        assert proc.stdout is not None
        deadline = time.monotonic() + HANG
        while not any(name in s and "Completed" in s for s in seen):
            assert time.monotonic() < deadline, seen
            seen.append(proc.stdout.readline())
        statuses = [s.split()[2] for s in seen if s.startswith(name)]
        assert "Running" in statuses and statuses[-1] == "Completed", statuses
        assert proc.poll() is None  # still watching
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert "watch is not supported" not in err and "Failed to watch" not in err, err


@pytest.mark.parametrize("version", VERSIONS)
def test_wait_and_run_rm(srv: Server, version: str) -> None:
    name = unique("wait")
    create(srv, name, sh("main", "sleep 3; exec sleep 100000"))
    r = srv.kubectl(
        version, "wait", "--for=condition=Ready", f"pod/{name}", "--timeout=60s", timeout=HANG + 10
    )
    assert r.returncode == 0 and f"pod/{name} condition met" in r.stdout, r
    waiter = srv.kubectl_popen(
        version, "wait", "--for=delete", f"pod/{name}", "--timeout=60s",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1)
    r = srv.kubectl(version, "delete", "pod", name, "--grace-period=1")
    assert r.returncode == 0, r.stderr
    out, err = waiter.communicate(timeout=HANG)
    assert waiter.returncode == 0, (out, err)
    # run -i --rm: waits for the pod with a watch, attaches, and deletes it after.
    run = unique("run")
    r = srv.kubectl(version, "run", run, f"--image={BUSYBOX}", "--restart=Never", "-i", "--rm",
                    "--", "sh", "-c", "sleep 2; echo from-run", timeout=HANG, input="")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "from-run" in r.stdout and f'pod "{run}" deleted' in r.stdout + r.stderr, r
    assert "Failed to watch" not in r.stderr, r.stderr
    assert srv.kubectl(version, "get", "pod", run).returncode != 0


# ------------------------------------------------------------------------------- patch


@pytest.mark.parametrize("version", VERSIONS)
def test_label_annotate_edit_apply(srv: Server, version: str) -> None:
    name = unique("meta")
    manifest = srv.state_dir / f"{name}.yaml"
    manifest.write_text(f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: one}}}}
spec:
  containers:
  - {{name: main, image: {BUSYBOX}, command: [sleep, "100000"]}}
""")
    r = srv.kubectl(version, "apply", "-f", str(manifest))
    assert r.returncode == 0, r.stderr
    assert srv.kubectl(version, "label", "pod", name, "tier=front").returncode == 0
    assert srv.kubectl(version, "annotate", "pod", name, "note=hello").returncode == 0
    meta = pod_json(srv, name)["metadata"]
    assert meta["labels"] == {"app": "one", "tier": "front"}
    assert meta["annotations"]["note"] == "hello"
    r = srv.kubectl(version, "label", "pod", name, "tier=back")
    assert r.returncode != 0 and "--overwrite is false" in r.stderr, r.stderr
    assert srv.kubectl(version, "label", "pod", name, "tier-").returncode == 0
    r = srv.kubectl(version, "get", "pods", "-l", "app=one", "-o", "name")
    assert r.stdout.split() == [f"pod/{name}"], r
    # apply a changed label: a strategic merge patch with the last applied configuration
    manifest.write_text(manifest.read_text().replace("app: one", "app: two"))
    r = srv.kubectl(version, "apply", "-f", str(manifest))
    assert r.returncode == 0 and "configured" in r.stdout, r
    assert pod_json(srv, name)["metadata"]["labels"] == {"app": "two"}
    # edit through $EDITOR
    edit = subprocess.run(
        srv.kubectl_cmd(version, "edit", "pod", name),
        env={"EDITOR": "sed -i s/app:\\ two/app:\\ three/", "PATH": "/usr/bin:/bin",
             "HOME": str(srv.state_dir)},
        capture_output=True, text=True, timeout=HANG,
    )  # fmt: skip
    assert edit.returncode == 0, edit.stderr
    assert pod_json(srv, name)["metadata"]["labels"] == {"app": "three"}
    # a change to what cannot change: the apiserver's 422, nothing changed
    manifest.write_text(manifest.read_text().replace('"100000"', '"5"'))
    r = srv.kubectl(version, "apply", "-f", str(manifest))
    assert r.returncode != 0
    assert "Forbidden: pod updates may not change fields other than" in r.stderr, r.stderr
    if srv.runtime != "docker":
        return  # the process runtime's pods end with the server
    # survives a restart of the gateway
    srv.stop()
    srv.start()
    assert pod_json(srv, name)["metadata"]["labels"] == {"app": "three"}


def test_python_client_log_events_watch_patch(srv: Server) -> None:
    api_client = config.new_client_from_config(config_file=str(srv.kubeconfig))
    core = client.CoreV1Api(api_client)
    try:
        name = unique("py")
        core.create_namespaced_pod(
            "default",
            {  # type: ignore[arg-type]
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name},
                "spec": {"restartPolicy": "Never", "containers": [sh("main", "echo hi; sleep 1")]},
            },
        )
        w = watch.Watch()
        phases = []
        selector = f"metadata.name={name}"
        stream = w.stream(core.list_namespaced_pod, "default", field_selector=selector,
                          timeout_seconds=int(HANG))  # fmt: skip
        for ev in stream:
            phases.append(ev["object"].status.phase)
            if ev["object"].status.phase == "Succeeded":
                w.stop()
        assert phases[-1] == "Succeeded", phases
        assert core.read_namespaced_pod_log(name, "default") == "hi\n"
        events = core.list_namespaced_event("default", field_selector=f"involvedObject.name={name}")
        assert {"Scheduled", "Started"} <= {e.reason for e in events.items}
        patched = core.patch_namespaced_pod(name, "default", {"metadata": {"labels": {"x": "y"}}})
        assert patched.metadata is not None and patched.metadata.labels == {"x": "y"}
        nodes = core.list_node().items
        assert [n.metadata.name for n in nodes] == ["streamsrv"]  # type: ignore[union-attr]
        namespaces = {n.metadata.name for n in core.list_namespace().items}  # type: ignore[union-attr]
        assert {"default", "kube-system"} <= namespaces
    finally:
        api_client.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_cp_both_ways(srv: Server, chatty: str, version: str, tmp_path: Path) -> None:
    # A relative path: the container's working directory ("/" on Docker, the pod's directory on
    # the process runtime, whose "containers" see the host's files).
    data = tmp_path / "up.bin"
    data.write_bytes(bytes(range(256)) * 4096)
    there = f"up-{version}.bin"
    r = srv.kubectl(version, "cp", str(data), f"{chatty}:{there}", "-c", "a", timeout=HANG)
    assert r.returncode == 0, r.stderr
    back = tmp_path / "down.bin"
    r = srv.kubectl(version, "cp", f"{chatty}:{there}", str(back), "-c", "a", timeout=HANG)
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == data.read_bytes()
