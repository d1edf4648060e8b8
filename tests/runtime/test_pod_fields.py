"""The pod model's fields for CRI: PID/IPC namespaces, log paths, the node name (no engine)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from streamsrv.pods import (
    LABEL_CONTAINER_ATTEMPT,
    LABEL_LOG_PATH,
    LABEL_POD_ATTEMPT,
    PID_NODE,
    PID_POD,
    ContainerSpec,
    ContainerState,
    InvalidPod,
    PodSpec,
    SandboxState,
    parse_pod,
    pod_from_labels,
    render_pod,
)


def manifest(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "a", "image": "i"}, {"name": "b", "image": "i"}], **spec},
    }


def test_defaults_keep_todays_behaviour() -> None:
    pod = parse_pod(manifest())
    assert not pod.host_pid and not pod.host_ipc
    assert all(c.pid_namespace == PID_POD and c.log_path == "" for c in pod.containers)
    assert ContainerSpec("a", "i").pid_namespace == "pod"
    assert PodSpec("p", "default", "u", ()).host_pid is False
    # no new key in the stored manifest, the sandbox's labels or a container's labels
    assert set(pod.manifest["spec"]) == {"containers", "terminationGracePeriodSeconds"}
    assert LABEL_LOG_PATH not in pod.container_labels(pod.containers[0])


def test_host_pid_and_ipc_are_parsed_kept_and_read_back() -> None:
    pod = parse_pod(manifest(hostPID=True, hostIPC=True))
    assert pod.host_pid and pod.host_ipc
    assert [c.pid_namespace for c in pod.containers] == [PID_NODE, PID_NODE]
    assert pod.manifest["spec"]["hostPID"] is True and pod.manifest["spec"]["hostIPC"] is True
    back = pod_from_labels(pod.sandbox_labels())
    assert back.host_pid and back.host_ipc and back.uid == pod.uid
    assert [c.pid_namespace for c in back.containers] == [PID_NODE, PID_NODE]
    only_ipc = pod_from_labels(parse_pod(manifest(hostIPC=True)).sandbox_labels())
    assert only_ipc.host_ipc and not only_ipc.host_pid
    assert [c.pid_namespace for c in only_ipc.containers] == [PID_POD, PID_POD]


@pytest.mark.parametrize("share", [True, False])
def test_share_process_namespace_is_accepted_and_changes_nothing(share: bool) -> None:
    pod = parse_pod(manifest(shareProcessNamespace=share))
    assert [c.pid_namespace for c in pod.containers] == [PID_POD, PID_POD]
    back = pod_from_labels(pod.sandbox_labels())
    assert [c.pid_namespace for c in back.containers] == [PID_POD, PID_POD]
    assert back.manifest["spec"].get("shareProcessNamespace", False) is share


@pytest.mark.parametrize("key", ["hostPID", "hostIPC", "shareProcessNamespace"])
@pytest.mark.parametrize("value", ["true", 1, [], {}])
def test_the_new_booleans_are_type_checked(key: str, value: object) -> None:
    with pytest.raises(InvalidPod) as err:
        parse_pod(manifest(**{key: value}))
    assert err.value.causes == [(f"spec.{key}", f"Invalid value: {value!r}: must be a boolean")]


def test_host_pid_and_a_shared_process_namespace_exclude_each_other() -> None:
    with pytest.raises(InvalidPod, match="ShareProcessNamespace and HostPID cannot both"):
        parse_pod(manifest(hostPID=True, shareProcessNamespace=True))


def test_log_path_is_a_container_label() -> None:
    pod = parse_pod(manifest())
    c = dataclasses.replace(pod.containers[0], log_path="/var/log/pods/x/a/0.log")
    assert pod.container_labels(c)[LABEL_LOG_PATH] == "/var/log/pods/x/a/0.log"


def test_node_name_comes_from_the_sandbox_when_set() -> None:
    pod = parse_pod(manifest())
    when = datetime(2024, 1, 1, tzinfo=UTC)
    sandbox = SandboxState("s", pod, True, when)
    assert sandbox.node == ""
    running = [
        ContainerState("c1", "a", "i", "", "running"),
        ContainerState("c2", "b", "i", "", "running"),
    ]
    assert running[0].log_path == ""
    assert render_pod(sandbox, running)["spec"]["nodeName"] == "streamsrv"
    named = dataclasses.replace(sandbox, node="worker-1")
    assert render_pod(named, running)["spec"]["nodeName"] == "worker-1"


def test_attempts_default_to_zero_and_round_trip_when_set() -> None:
    pod = parse_pod(manifest())
    assert pod.attempt == 0 and all(c.attempt == 0 for c in pod.containers)
    assert LABEL_POD_ATTEMPT not in pod.sandbox_labels()
    assert LABEL_CONTAINER_ATTEMPT not in pod.container_labels(pod.containers[0])
    again = dataclasses.replace(pod, attempt=3)
    assert again.sandbox_labels()[LABEL_POD_ATTEMPT] == "3"
    assert pod_from_labels(again.sandbox_labels()).attempt == 3
    c = dataclasses.replace(pod.containers[0], attempt=2)
    assert pod.container_labels(c)[LABEL_CONTAINER_ATTEMPT] == "2"
    bad = {**again.sandbox_labels(), LABEL_POD_ATTEMPT: "x"}
    assert pod_from_labels(bad).attempt == 0
