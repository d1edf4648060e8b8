"""Manifest parsing, labels and status rendering, without an engine."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamsrv.pods import (
    DEFAULT_CONTAINER_ANNOTATION,
    LABEL_MANIFEST,
    LABEL_POD_UID,
    ContainerState,
    InvalidPod,
    SandboxState,
    parse_pod,
    pod_from_labels,
    pod_phase,
    render_pod,
)


def manifest(**spec: object) -> dict[str, object]:
    base: dict[str, object] = {
        "containers": [{"name": "a", "image": "img:1", "command": ["sleep", "1"]}]
    }
    base.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": base}


def test_full_manifest_is_parsed() -> None:
    doc = manifest(
        containers=[
            {
                "name": "a",
                "image": "img:1",
                "command": ["sh"],
                "args": ["-c", "echo"],
                "env": [{"name": "X", "value": "1"}, {"name": "EMPTY"}],
                "workingDir": "/w",
                "tty": True,
                "stdin": True,
                "ports": [{"containerPort": 80, "name": "http"}],
            },
            {"name": "b", "image": "img:2"},
        ],
        hostNetwork=True,
        terminationGracePeriodSeconds=5,
    )
    doc["metadata"] = {
        "name": "p",
        "namespace": "ns",
        "labels": {"app": "x"},
        "annotations": {DEFAULT_CONTAINER_ANNOTATION: "b"},
    }
    pod = parse_pod(doc)
    a = pod.containers[0]
    assert (a.command, a.args, a.env, a.working_dir) == (
        ("sh",), ("-c", "echo"), (("X", "1"), ("EMPTY", "")), "/w",
    )  # fmt: skip
    assert a.tty and a.stdin and a.ports[0].container_port == 80
    assert pod.namespace == "ns" and pod.host_network and pod.termination_grace_period == 5
    assert pod.default_container().name == "b"
    assert pod.labels == {"app": "x"}


def test_default_container_is_the_first_without_annotation() -> None:
    pod = parse_pod(manifest(containers=[{"name": "x", "image": "i"}, {"name": "y", "image": "i"}]))
    assert pod.default_container().name == "x"


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ("text", "must be an object"),
        ({"kind": "Service", "metadata": {"name": "p"}, "spec": {}}, "only apiVersion v1"),
        ({"metadata": {}, "spec": {"containers": [{"name": "a", "image": "i"}]}},
         "metadata.name: Required value"),
        (manifest(containers=[]), "spec.containers: Required value"),
        (manifest(containers=[{"image": "i"}]), "spec.containers[0].name: Required value"),
        (manifest(containers=[{"name": "A_B", "image": "i"}]), "DNS-1123 label"),
        (manifest(containers=[{"name": "a"}]), "spec.containers[0].image: Required value"),
        (manifest(containers=[{"name": "a", "image": "i"}, {"name": "a", "image": "i"}]),
         'spec.containers[1].name: Duplicate value: "a"'),
        (manifest(containers=[{"name": "a", "image": "i", "command": "sleep"}]),
         "spec.containers[0].command"),
        (manifest(containers=[{"name": "a", "image": "i", "ports": [{"containerPort": 0}]}]),
         "containerPort"),
        (manifest(containers=[{"name": "a", "image": "i", "tty": "yes"}]), "must be a boolean"),
        (manifest(containers=[{"name": "a", "image": "i", "env": [{"name": "1x"}]}]),
         "env[0].name"),
        (manifest(terminationGracePeriodSeconds=-1), "terminationGracePeriodSeconds"),
    ],
)  # fmt: skip
def test_invalid_manifests_name_the_field(doc: object, fragment: str) -> None:
    with pytest.raises(InvalidPod) as info:
        parse_pod(doc)
    assert fragment in str(info.value)


def test_every_problem_is_reported_at_once() -> None:
    doc = manifest(containers=[{"image": "i"}, {"name": "b"}])
    with pytest.raises(InvalidPod) as info:
        parse_pod(doc)
    fields = [f for f, _ in info.value.causes]
    assert fields == ["spec.containers[0].name", "spec.containers[1].image"]


def test_request_namespace_must_match() -> None:
    doc = manifest()
    doc["metadata"] = {"name": "p", "namespace": "a"}
    with pytest.raises(InvalidPod, match="does not match"):
        parse_pod(doc, namespace="b")
    assert parse_pod(manifest(), namespace="b").namespace == "b"


def test_pod_round_trips_through_its_sandbox_labels() -> None:
    pod = parse_pod(manifest())
    labels = pod.sandbox_labels()
    assert LABEL_MANIFEST in labels and labels[LABEL_POD_UID] == pod.uid
    again = pod_from_labels(labels)
    assert again == pod


@given(
    name=st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True),
    env=st.lists(
        st.tuples(st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True), st.text(max_size=20)),
        max_size=4,
    ),
    command=st.lists(st.text(max_size=30), max_size=4),
)
def test_any_valid_pod_round_trips(
    name: str, env: list[tuple[str, str]], command: list[str]
) -> None:
    doc = manifest(
        containers=[
            {"name": "c", "image": "i", "command": command,
             "env": [{"name": k, "value": v} for k, v in env]}
        ]
    )  # fmt: skip
    doc["metadata"] = {"name": name}
    pod = parse_pod(doc)
    assert pod_from_labels(pod.sandbox_labels()) == pod


T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def state(name: str, kind: str, code: int | None = None) -> ContainerState:
    return ContainerState(
        f"id-{name}", name, "i", "sha", kind, code, T0, T0 if code is not None else None
    )


@pytest.mark.parametrize(
    ("states", "phase"),
    [
        ([("a", "running", None), ("b", "running", None)], "Running"),
        ([("a", "running", None)], "Pending"),  # b not created yet
        ([("a", "created", None), ("b", "running", None)], "Pending"),
        ([("a", "exited", 0), ("b", "exited", 0)], "Succeeded"),
        ([("a", "exited", 0), ("b", "exited", 2)], "Failed"),
        ([("a", "exited", 1), ("b", "running", None)], "Running"),
    ],
)
def test_phase(states: list[tuple[str, str, int | None]], phase: str) -> None:
    doc = manifest(containers=[{"name": "a", "image": "i"}, {"name": "b", "image": "i"}])
    doc["spec"]["restartPolicy"] = "Never"  # type: ignore[index]
    pod = parse_pod(doc)
    sandbox = SandboxState("sb", pod, True, T0)
    assert pod_phase(sandbox, [state(*s) for s in states]) == phase


@pytest.mark.parametrize(
    ("policy", "codes", "phase"),
    [
        (None, (0, 0), "Running"),  # the apiserver's default is Always: they will run again
        ("Always", (0, 2), "Running"),
        ("OnFailure", (0, 0), "Succeeded"),
        ("OnFailure", (0, 2), "Running"),  # the failed one will run again
        ("Never", (0, 2), "Failed"),
    ],
)
def test_phase_follows_the_restart_policy(
    policy: str | None, codes: tuple[int, int], phase: str
) -> None:
    doc = manifest(containers=[{"name": "a", "image": "i"}, {"name": "b", "image": "i"}])
    if policy:
        doc["spec"]["restartPolicy"] = policy  # type: ignore[index]
    pod = parse_pod(doc)
    assert pod.restart_policy == (policy or "Always")
    ended = [state("a", "exited", codes[0]), state("b", "exited", codes[1])]
    assert pod_phase(SandboxState("sb", pod, True, T0), ended) == phase


def test_an_unknown_restart_policy_is_refused() -> None:
    doc = manifest(containers=[{"name": "a", "image": "i"}])
    doc["spec"]["restartPolicy"] = "Sometimes"  # type: ignore[index]
    with pytest.raises(InvalidPod) as err:
        parse_pod(doc)
    assert err.value.causes == [
        (
            "spec.restartPolicy",
            'Unsupported value: "Sometimes": supported values: "Always", "Never", "OnFailure"',
        )
    ]


def test_rendered_pod_has_status_fields_kubectl_reads() -> None:
    pod = parse_pod(manifest(containers=[{"name": "a", "image": "i"}, {"name": "b", "image": "i"}]))
    obj = render_pod(
        SandboxState("sb", pod, True, T0, "10.0.0.7"),
        [state("a", "running"), state("b", "exited", 137)],
    )
    assert obj["metadata"]["uid"] == pod.uid
    assert obj["metadata"]["creationTimestamp"] == "2026-01-02T03:04:05Z"
    assert obj["status"]["podIP"] == "10.0.0.7"
    a, b = obj["status"]["containerStatuses"]
    assert a["state"] == {"running": {"startedAt": "2026-01-02T03:04:05Z"}} and a["ready"]
    assert a["containerID"] == "docker://id-a"
    assert b["state"]["terminated"]["exitCode"] == 137 and not b["ready"]
    assert obj["spec"]["containers"][0]["name"] == "a"


@pytest.mark.parametrize(
    ("where", "field"),
    [
        ("pod", "metadata.name"),
        ("namespace", "metadata.namespace"),
        ("container", "spec.containers[0].name"),
        ("env", "spec.containers[0].env[0].name"),
    ],
)
def test_a_name_with_a_trailing_newline_is_refused(where: str, field: str) -> None:
    # `$` in a regular expression also matches before a final newline: names are matched whole.
    manifest: dict[str, Any] = {
        "metadata": {"name": "demo"},
        "spec": {"containers": [{"name": "main", "image": "x", "env": [{"name": "A"}]}]},
    }
    if where == "pod":
        manifest["metadata"]["name"] = "demo\n"
    elif where == "namespace":
        manifest["metadata"]["namespace"] = "default\n"
    elif where == "container":
        manifest["spec"]["containers"][0]["name"] = "main\n"
    else:
        manifest["spec"]["containers"][0]["env"][0]["name"] = "A\n"
    with pytest.raises(InvalidPod) as caught:
        parse_pod(manifest)
    assert field in [f for f, _ in caught.value.causes]
