"""The apiserver's pod defaults (streamsrv/defaults.py), and every rendered pod carrying them."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamsrv.defaults import SPEC_DEFAULTS, image_pull_policy, pod_defaults
from streamsrv.pods import SandboxState, parse_pod, render_pod

NOT_READY = {
    "key": "node.kubernetes.io/not-ready",
    "operator": "Exists",
    "effect": "NoExecute",
    "tolerationSeconds": 300,
}
UNREACHABLE = NOT_READY | {"key": "node.kubernetes.io/unreachable"}


def pod(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"containers": [{"name": "a", "image": "busybox:1.36"}]}
    base.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": base}


def test_a_bare_pod_gets_every_default_the_apiserver_fills_in() -> None:
    got = pod_defaults(pod())
    assert got["spec"] == {
        "containers": [
            {
                "name": "a",
                "image": "busybox:1.36",
                "imagePullPolicy": "IfNotPresent",
                "resources": {},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
            }
        ],
        "restartPolicy": "Always",
        "dnsPolicy": "ClusterFirst",
        "schedulerName": "default-scheduler",
        "securityContext": {},
        "terminationGracePeriodSeconds": 30,
        "enableServiceLinks": True,
        "priority": 0,
        "preemptionPolicy": "PreemptLowerPriority",
        "serviceAccountName": "default",
        "serviceAccount": "default",
        "tolerations": [NOT_READY, UNREACHABLE],
    }
    assert got["metadata"] == {"name": "p"}


def test_the_manifest_itself_is_never_changed() -> None:
    doc = pod(
        volumes=[{"name": "v", "hostPath": {"path": "/x"}}],
        containers=[{"name": "a", "image": "i", "ports": [{"containerPort": 80}]}],
    )
    before = copy.deepcopy(doc)
    got = pod_defaults(doc)
    assert doc == before
    got["spec"]["containers"][0]["ports"][0]["name"] = "changed"
    got["spec"]["securityContext"]["runAsUser"] = 1
    assert doc == before
    assert pod_defaults(doc)["spec"]["securityContext"] == {}  # no shared default object


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("restartPolicy", "Never"),
        ("dnsPolicy", "Default"),
        ("schedulerName", "mine"),
        ("securityContext", {"runAsUser": 1000}),
        ("terminationGracePeriodSeconds", 0),
        ("enableServiceLinks", False),
        ("priority", 7),
        ("preemptionPolicy", "Never"),
        ("serviceAccountName", "builder"),
    ],
)
def test_what_the_user_set_is_kept(key: str, value: Any) -> None:
    assert pod_defaults(pod(**{key: value}))["spec"][key] == value


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(sorted(SPEC_DEFAULTS)),
        st.one_of(st.integers(), st.text(max_size=5), st.booleans()),
    )
)
def test_no_set_spec_field_is_ever_replaced(given_spec: dict[str, Any]) -> None:
    spec = pod_defaults(pod(**given_spec))["spec"]
    for key, value in given_spec.items():
        assert spec[key] == value
    for key in set(SPEC_DEFAULTS) - set(given_spec):
        assert spec[key] == SPEC_DEFAULTS[key]


def test_container_fields_the_user_set_are_kept() -> None:
    c = {
        "name": "a",
        "image": "busybox",
        "imagePullPolicy": "Never",
        "terminationMessagePath": "/tmp/msg",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": {"requests": {"cpu": "1"}},
        "ports": [{"containerPort": 53, "protocol": "UDP"}],
    }
    got = pod_defaults(pod(containers=[c], initContainers=[{"name": "i", "image": "x:latest"}]))
    assert got["spec"]["containers"] == [c]
    init = got["spec"]["initContainers"][0]
    assert init["imagePullPolicy"] == "Always"
    assert init["terminationMessagePath"] == "/dev/termination-log"


@pytest.mark.parametrize(
    ("image", "policy"),
    [
        ("busybox", "Always"),
        ("busybox:latest", "Always"),
        ("busybox:1.36", "IfNotPresent"),
        ("registry:5000/team/img", "Always"),
        ("registry:5000/team/img:2", "IfNotPresent"),
        ("img@sha256:" + "0" * 64, "IfNotPresent"),
        ("img:latest@sha256:" + "0" * 64, "Always"),
        ("streamsrv/busybox:local", "IfNotPresent"),
    ],
)
def test_image_pull_policy_follows_the_tag(image: str, policy: str) -> None:
    assert image_pull_policy(image) == policy


def test_ports_get_tcp_and_host_network_pods_their_host_ports() -> None:
    ports = [{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP", "hostPort": 5353}]
    plain = pod_defaults(pod(containers=[{"name": "a", "image": "i", "ports": ports}]))
    assert plain["spec"]["containers"][0]["ports"] == [
        {"containerPort": 80, "protocol": "TCP"},
        {"containerPort": 53, "protocol": "UDP", "hostPort": 5353},
    ]
    host = pod_defaults(
        pod(hostNetwork=True, containers=[{"name": "a", "image": "i", "ports": ports}])
    )
    assert host["spec"]["containers"][0]["ports"][0] == {
        "containerPort": 80,
        "protocol": "TCP",
        "hostPort": 80,
    }


def test_limits_are_the_requests_that_are_not_set() -> None:
    c = {"name": "a", "image": "i", "resources": {"limits": {"cpu": "2", "memory": "1Gi"},
                                                  "requests": {"cpu": "1"}}}  # fmt: skip
    got = pod_defaults(pod(containers=[c]))["spec"]["containers"][0]["resources"]
    assert got == {
        "limits": {"cpu": "2", "memory": "1Gi"},
        "requests": {"cpu": "1", "memory": "1Gi"},
    }


@pytest.mark.parametrize(
    ("tolerations", "expected"),
    [
        # The user's own not-ready toleration wins; only unreachable is added.
        (
            [NOT_READY | {"tolerationSeconds": 5}],
            [NOT_READY | {"tolerationSeconds": 5}, UNREACHABLE],
        ),
        # One that tolerates every taint: nothing to add.
        ([{"operator": "Exists"}], [{"operator": "Exists"}]),
        # Another effect does not count.
        (
            [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule"}],
            [
                {
                    "key": "node.kubernetes.io/not-ready",
                    "operator": "Exists",
                    "effect": "NoSchedule",
                },
                NOT_READY,
                UNREACHABLE,
            ],
        ),
        (None, [NOT_READY, UNREACHABLE]),
    ],
)
def test_default_toleration_seconds(tolerations: Any, expected: list[dict[str, Any]]) -> None:
    assert pod_defaults(pod(tolerations=tolerations))["spec"]["tolerations"] == expected


def test_service_account_fields_agree() -> None:
    spec = pod_defaults(pod(serviceAccount="old-name"))["spec"]
    assert spec["serviceAccountName"] == spec["serviceAccount"] == "old-name"


def test_volumes_get_their_source_defaults() -> None:
    got = pod_defaults(
        pod(
            volumes=[
                {"name": "h", "hostPath": {"path": "/data"}},
                {"name": "t", "hostPath": {"path": "/d", "type": "Directory"}},
                {"name": "e", "emptyDir": {}},
                {"name": "bare"},
            ]
        )
    )
    assert got["spec"]["volumes"] == [
        {"name": "h", "hostPath": {"path": "/data", "type": ""}},
        {"name": "t", "hostPath": {"path": "/d", "type": "Directory"}},
        {"name": "e", "emptyDir": {}},
        {"name": "bare", "emptyDir": {}},
    ]


def test_what_is_not_a_pod_is_left_alone() -> None:
    assert pod_defaults({"spec": "nonsense"}) == {"spec": "nonsense"}
    assert pod_defaults({})["spec"]["dnsPolicy"] == "ClusterFirst"
    odd = pod(containers=["not an object"], volumes=[7], tolerations="x")
    assert pod_defaults(odd)["spec"]["containers"] == ["not an object"]


def test_every_rendered_pod_carries_the_defaults() -> None:
    """pods.render_pod, what the gateway returns for every pod, goes through pod_defaults;
    what the manifest set stays (kubectl debug read securityContext and crashed without it)."""
    spec = parse_pod(
        pod(
            terminationGracePeriodSeconds=5,
            containers=[{"name": "a", "image": "busybox", "ports": [{"containerPort": 8080}]}],
        )
    )
    when = datetime(2024, 1, 1, tzinfo=UTC)
    rendered = render_pod(SandboxState("sb", spec, True, when), [])["spec"]
    assert rendered["securityContext"] == {}
    assert rendered["terminationGracePeriodSeconds"] == 5
    assert rendered["schedulerName"] == "default-scheduler"
    assert rendered["tolerations"] == [NOT_READY, UNREACHABLE]
    assert rendered["nodeName"] == "streamsrv"
    [c] = rendered["containers"]
    assert c["imagePullPolicy"] == "Always"
    assert c["terminationMessagePolicy"] == "File"
    assert c["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    # The stored manifest is the user's, without the defaults.
    assert "securityContext" not in spec.manifest["spec"]
