"""The hand-written Kubernetes protobuf decoder (streamsrv/k8sproto.py), and the gateway taking
protobuf pods as kubectl 1.32+ send them.

The ``tests/data/k8sproto`` bodies are real: what kubectl sent to a streamsrv gateway that
saved each pod POST body (``kubectl debug orig --copy-to=...`` and ``kubectl debug
node/streamsrv -i``, by 1.32/1.33 as protobuf and by 1.31 as JSON, same commands); see the
README there. The rest are built by the small encoder below.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import re
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamsrv import k8sproto
from streamsrv.app import make_app
from streamsrv.k8sproto import MAGIC, ProtobufError, decode, decode_pod
from streamsrv.podmanager import PodManager
from streamsrv.pods import InvalidPod, parse_pod
from streamsrv.runtime.process import ProcessRuntime
from streamsrv.server import StreamServer

DATA = Path(__file__).parent / "data" / "k8sproto"

# ------------------------------------------------------------------------------- an encoder


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative numbers as Go writes them: ten bytes of two's complement
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def s(number: int, value: str | bytes) -> bytes:
    """A length-delimited field: a string, bytes or an encoded message."""
    raw = value.encode() if isinstance(value, str) else value
    return tag(number, 2) + varint(len(raw)) + raw


def n(number: int, value: int) -> bytes:
    """A varint field (bool, int32, int64)."""
    return tag(number, 0) + varint(value)


def entry(number: int, key: str, value: str | bytes) -> bytes:
    """One entry of a map field."""
    return s(number, s(1, key) + s(2, value))


def envelope(pod: bytes, api_version: str = "v1", kind: str = "Pod", **extra: bytes) -> bytes:
    meta = (s(1, api_version) if api_version else b"") + (s(2, kind) if kind else b"")
    return MAGIC + s(1, meta) + s(2, pod) + b"".join(extra.values())


def container(name: str = "main", *more: bytes) -> bytes:
    return s(1, name) + s(2, "busybox") + s(3, "sleep") + s(3, "60") + b"".join(more)


def pod(*spec: bytes, meta: bytes = b"") -> bytes:
    return s(1, s(1, "p") + meta) + s(2, b"".join(spec) or s(2, container()))


# ------------------------------------------------------------------------------- real bodies


def normalised(doc: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    text = json.dumps(doc)
    for old, new in names.items():
        text = text.replace(old, new)
    return dict(json.loads(text))


def json_form(name: str) -> dict[str, Any]:
    """A 1.31 JSON body without what the decoder leaves out by design (a zero
    ``creationTimestamp`` is ``null`` in JSON, ``status`` is not decoded)."""
    doc = json.loads((DATA / name).read_bytes())
    assert doc["metadata"].pop("creationTimestamp") is None
    assert doc.pop("status") == {}
    return dict(doc)


def random_names(doc: dict[str, Any]) -> dict[str, str]:
    """kubectl's random suffixes (``debugger-26cgd``) in ``doc``, mapped to a fixed text."""
    found = re.findall(r"(?:debugger|node-debugger-streamsrv)-[a-z0-9]{5}", json.dumps(doc))
    return {name: name.rsplit("-", 1)[0] + "-XXXXX" for name in found}


@pytest.mark.parametrize(
    ("protobuf", "as_json", "names"),
    [
        ("debug-copy-1.33.pb", "debug-copy-1.31.json", {"copy-133": "copy-131"}),
        ("debug-node-1.33.pb", "debug-node-1.31.json", {}),
        (
            "debug-copy-restricted-1.33.pb",
            "debug-copy-restricted-1.31.json",
            {"c-restricted": "c131-restricted"},
        ),
    ],
)
def test_a_real_body_decodes_to_what_the_same_command_sends_as_json(
    protobuf: str, as_json: str, names: dict[str, str]
) -> None:
    """kubectl 1.33's protobuf and 1.31's JSON for one command: the same dict, but for the
    names kubectl makes up."""
    got = decode((DATA / protobuf).read_bytes())
    want = json_form(as_json)
    got = normalised(got, names | random_names(got))
    want = normalised(want, random_names(want))
    assert got == want


def test_the_decoded_debug_pods_are_accepted_by_the_pod_model() -> None:
    copy = parse_pod(decode((DATA / "debug-copy-1.32.pb").read_bytes()), namespace="default")
    assert [c.name for c in copy.containers] == ["main", "debugger-p58h2"]
    assert copy.containers[1].command == ("sleep", "1000")
    assert copy.containers[0].env == (("A", "1"), ("EMPTY", ""))
    assert copy.volumes[0].size_limit == "64Mi"

    node = parse_pod(decode((DATA / "debug-node-1.33.pb").read_bytes()), namespace="default")
    assert node.host_network and node.host_pid and node.host_ipc
    assert node.containers[0].stdin and not node.containers[0].tty
    assert node.manifest["spec"]["nodeName"] == "streamsrv"
    assert node.manifest["spec"]["restartPolicy"] == "Never"
    assert (node.volumes[0].kind, node.volumes[0].path) == ("hostPath", "/")

    sysadmin = decode((DATA / "debug-node-sysadmin-1.33.pb").read_bytes())
    assert sysadmin["spec"]["containers"][0]["securityContext"] == {"privileged": True}


# ------------------------------------------------------------------------------- semantics


def test_pointer_fields_keep_false_and_zero_plain_omitempty_fields_drop_them() -> None:
    sc = n(2, 0) + n(5, 0) + n(7, 0) + n(4, 0)  # privileged, runAsNonRoot, allowPE, runAsUser
    body = envelope(
        pod(
            s(
                2,
                container(
                    "main",
                    s(5, ""),  # workingDir
                    s(6, s(1, "") + n(2, 0) + n(3, 0) + s(4, "") + s(5, "")),  # a port, all zero
                    s(9, s(1, "v") + n(2, 0) + s(3, "") + s(4, "")),  # a mount, all zero
                    s(15, sc),
                    n(16, 0) + n(17, 0) + n(18, 0),  # stdin, stdinOnce, tty
                    s(14, ""),  # imagePullPolicy
                ),
            ),
            s(3, ""),  # restartPolicy
            n(4, 0),  # terminationGracePeriodSeconds (a pointer)
            n(11, 0) + n(12, 0) + n(13, 0),  # hostNetwork, hostPID, hostIPC
            n(27, 0),  # shareProcessNamespace (a pointer)
            n(25, 0),  # priority (a pointer)
            n(30, 0),  # enableServiceLinks (a pointer)
            s(10, ""),  # nodeName
            s(14, b""),  # securityContext: {}
        ),
    )
    spec = decode(body)["spec"]
    assert spec == {
        "containers": [
            {
                "name": "main",
                "image": "busybox",
                "command": ["sleep", "60"],
                "ports": [{"containerPort": 0}],
                "volumeMounts": [{"name": "v", "mountPath": ""}],
                "securityContext": {
                    "privileged": False,
                    "runAsNonRoot": False,
                    "allowPrivilegeEscalation": False,
                    "runAsUser": 0,
                },
            }
        ],
        "terminationGracePeriodSeconds": 0,
        "shareProcessNamespace": False,
        "priority": 0,
        "enableServiceLinks": False,
        "securityContext": {},
    }


def test_a_later_value_wins_and_a_message_sent_twice_is_merged() -> None:
    body = envelope(
        s(1, s(1, "first") + entry(11, "a", "1"))
        + s(1, s(1, "second") + entry(11, "b", "2") + entry(11, "a", "3"))
        + s(2, s(2, container()) + s(3, "Never") + s(3, ""))
    )
    doc = decode(body)
    assert doc["metadata"] == {"name": "second", "labels": {"a": "3", "b": "2"}}
    assert "restartPolicy" not in doc["spec"]  # the later empty value, as Go would have it


def test_maps_quantities_and_missing_map_values() -> None:
    resources = (
        entry(1, "cpu", s(1, "500m"))
        + entry(1, "memory", s(1, "64Mi"))
        + entry(2, "cpu", b"")  # a Quantity with no string: Go's zero, "0"
        + s(2, s(1, "memory"))  # an entry with no value at all
    )
    body = envelope(
        pod(
            s(2, container("main", s(8, resources))),
            s(7, s(1, "disk")),  # nodeSelector: an entry with a key only
            # annotations with a value only (key ""), labels in any order
            meta=entry(12, "", "x") + entry(11, "z", "1") + entry(11, "a", "2"),
        )
    )
    doc = decode(body)
    assert doc["metadata"]["annotations"] == {"": "x"}
    assert doc["metadata"]["labels"] == {"z": "1", "a": "2"}
    assert doc["spec"]["containers"][0]["resources"] == {
        "limits": {"cpu": "500m", "memory": "64Mi"},
        "requests": {"cpu": "0", "memory": "0"},
    }
    assert doc["spec"]["nodeSelector"] == {"disk": ""}


def test_unknown_fields_of_every_wire_type_are_skipped() -> None:
    unknown = (
        n(99, 12345)  # varint
        + tag(98, 1) + b"\x00" * 8  # 64-bit
        + s(97, b"\xff\xfe anything")  # length-delimited
        + tag(96, 5) + b"\x00" * 4  # 32-bit
    )  # fmt: skip
    status = s(3, s(1, "Running") + s(6, "10.0.0.1"))  # Pod.status: not decoded
    ephemeral = s(34, s(1, "dbg"))  # spec.ephemeralContainers: not decoded
    body = envelope(pod(s(2, container("main", unknown)), ephemeral, unknown) + status, x=unknown)
    doc = decode(body)
    assert doc == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "main", "image": "busybox", "command": ["sleep", "60"]}]},
    }


def test_numbers_packed_negative_and_int32_bounds() -> None:
    groups = s(4, varint(1) + varint(2)) + n(4, 3)  # packed, then one more unpacked
    body = envelope(pod(s(2, container()), s(14, groups + n(2, -1) + n(5, 2**40))))
    sc = decode(body)["spec"]["securityContext"]
    assert sc == {"supplementalGroups": [1, 2, 3], "runAsUser": -1, "fsGroup": 2**40}
    assert decode(envelope(pod(s(2, container()), n(25, -(2**31)))))["spec"]["priority"] == -(2**31)
    with pytest.raises(ProtobufError, match=r"spec\.priority: 2147483648 does not fit in int32"):
        decode(envelope(pod(s(2, container()), n(25, 2**31))))


def test_times_are_rfc3339_seconds_and_the_zero_time_is_left_out() -> None:
    meta = s(8, n(1, 1714564800) + n(2, 999)) + s(9, b"") + n(10, 30)
    doc = decode(envelope(pod(meta=meta)))
    assert doc["metadata"] == {
        "name": "p",
        "creationTimestamp": "2024-05-01T12:00:00Z",
        "deletionGracePeriodSeconds": 30,
    }
    assert (
        decode(envelope(pod(meta=s(8, n(1, -62135596800)))))["metadata"]["creationTimestamp"]
        == "0001-01-01T00:00:00Z"
    )
    with pytest.raises(ProtobufError, match="out of range"):
        decode(envelope(pod(meta=s(8, n(1, 253402300800)))))


def test_metadata_the_update_checks_read() -> None:
    owner = s(5, "v1") + s(1, "Node") + s(3, "n") + s(4, "u1") + n(6, 0)
    meta = s(5, "uid-1") + s(6, "42") + n(7, 3) + s(13, owner) + s(14, "f1") + s(2, "p-")
    doc = decode(envelope(pod(meta=meta)))
    assert doc["metadata"] == {
        "name": "p",
        "uid": "uid-1",
        "resourceVersion": "42",
        "generation": 3,
        "ownerReferences": [
            {"apiVersion": "v1", "kind": "Node", "name": "n", "uid": "u1", "controller": False}
        ],
        "finalizers": ["f1"],
        "generateName": "p-",
    }


def test_env_value_from_and_tolerations() -> None:
    env = (
        s(7, s(1, "A") + s(2, "1"))
        + s(7, s(1, "POD") + s(3, s(1, s(1, "v1") + s(2, "metadata.name"))))
        + s(7, s(1, "CM") + s(3, s(3, s(1, s(1, "cm")) + s(2, "k") + n(3, 1))))
        + s(7, s(1, "LIM") + s(3, s(2, s(2, "limits.cpu") + s(3, s(1, "1m")))))
    )
    tol = s(1, "k") + s(2, "Equal") + s(3, "v") + s(4, "NoExecute") + n(5, 0)
    doc = decode(envelope(pod(s(2, container("main", env)), s(22, tol))))
    assert doc["spec"]["containers"][0]["env"] == [
        {"name": "A", "value": "1"},
        {"name": "POD", "valueFrom": {"fieldRef": {"apiVersion": "v1",
                                                   "fieldPath": "metadata.name"}}},
        {"name": "CM", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k",
                                                         "optional": True}}},
        {"name": "LIM", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu",
                                                           "divisor": "1m"}}},
    ]  # fmt: skip
    assert doc["spec"]["tolerations"] == [
        {"key": "k", "operator": "Equal", "value": "v", "effect": "NoExecute",
         "tolerationSeconds": 0}
    ]  # fmt: skip


def test_volumes_and_a_source_that_is_not_served_is_named_in_the_refusal() -> None:
    volumes = (
        s(1, s(1, "host") + s(2, s(1, s(1, "/srv") + s(2, ""))))
        + s(1, s(1, "scratch") + s(2, s(2, s(1, "Memory") + s(2, s(1, "1Gi")))))
        + s(1, s(1, "cm") + s(2, s(19, s(1, s(1, "settings")))))
    )
    mount = s(9, s(1, "host") + n(2, 1) + s(3, "/h") + s(4, "sub") + s(5, "None"))
    doc = decode(envelope(pod(volumes, s(2, container("main", mount)))))
    assert doc["spec"]["volumes"] == [
        {"name": "host", "hostPath": {"path": "/srv", "type": ""}},
        {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
        {"name": "cm", "configMap": {}},
    ]
    assert doc["spec"]["containers"][0]["volumeMounts"] == [
        {"name": "host", "readOnly": True, "mountPath": "/h", "subPath": "sub",
         "mountPropagation": "None"}
    ]  # fmt: skip
    with pytest.raises(InvalidPod) as caught:
        parse_pod(doc)
    assert any(
        field == "spec.volumes[2].configMap" and 'Unsupported value: "configMap"' in message
        for field, message in caught.value.causes
    ), caught.value.causes


def test_init_containers_and_the_envelope_without_type_meta() -> None:
    body = MAGIC + s(2, pod(s(20, container("init")), s(2, container())))
    doc = decode(body)
    assert "apiVersion" not in doc and "kind" not in doc
    assert doc["spec"]["initContainers"][0]["name"] == "init"
    assert decode_pod(pod())["metadata"] == {"name": "p"}


# ------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "no k8s"),
        (b'{"kind": "Pod"}', "no k8s"),
        (b"k8s\x01" + s(2, pod()), "no k8s"),
        (MAGIC, "empty body"),
        (MAGIC + b"\x0a", "typeMeta: truncated varint"),  # a tag, then no length
        (MAGIC + b"\x0a\x80", "typeMeta: truncated varint"),  # a length that never ends
        (MAGIC + b"\x12\x05ab", "raw: length 5 runs past the end"),
        (MAGIC + b"\x0b", "groups \\(wire type 3\\) are not accepted"),
        (MAGIC + b"\x0c", "groups \\(wire type 4\\) are not accepted"),
        (MAGIC + b"\x0e", "invalid wire type 6"),
        (MAGIC + b"\x0f", "invalid wire type 7"),
        (MAGIC + b"\x02\x00", "invalid field number 0"),
        (MAGIC + n(99, 0)[:-1] + b"\xff" * 10 + b"\x01", "varint longer than 10 bytes"),
        (MAGIC + tag(99, 0) + b"\xff" * 9 + b"\x7f", "overflows 64 bits"),
        (MAGIC + tag(99, 1) + b"\x00" * 7, "truncated 64-bit value"),
        (MAGIC + tag(99, 5) + b"\x00" * 3, "truncated 32-bit value"),
        (MAGIC + n(2, 1), "raw: wire type 0, expected 2"),
        (envelope(pod(), kind="Service"), "only a v1 Pod can be decoded from protobuf, not v1 Ser"),
        (envelope(pod(), api_version="apps/v1"), "not apps/v1 Pod"),
        (envelope(pod(), x=s(3, "gzip")), "contentEncoding 'gzip' is not supported"),
        (envelope(pod(), x=s(4, "application/json")), "is not protobuf"),
        (envelope(s(1, n(1, 1))), "metadata.name: wire type 0, expected 2"),
        (envelope(s(1, s(1, b"\xc3\x28"))), "metadata.name: not valid UTF-8"),
        (envelope(s(1, entry(11, "k", b"\xff"))), r"metadata.labels\[k\]: not valid UTF-8"),
        (envelope(s(2, s(2, s(16, b"")))), r"spec.containers.stdin: wire type 2, expected 0"),
        (envelope(s(2, s(2, s(1, "a") + b"\x1a\x05ab"))), "spec.containers.command: length 5"),
        (envelope(s(2, s(2, n(8, 1)))), "spec.containers.resources: wire type 0, expected 2"),
        (envelope(s(2, s(2, n(16, 1)[:-1]))), "spec.containers.stdin: truncated varint"),
        (envelope(s(2, s(2, b"\x83"))), "spec.containers: truncated varint"),
        (envelope(s(2, s(2, s(99, b"") + b"\x9b\x06"))), r"spec.containers, field 99: groups"),
    ],
)
def test_malformed_bodies_are_refused_with_a_clear_message(body: bytes, message: str) -> None:
    with pytest.raises(ProtobufError, match=message):
        decode(body)


def test_nesting_is_bounded() -> None:
    body = (DATA / "debug-copy-restricted-1.33.pb").read_bytes()
    decode(body, max_depth=7)  # the deepest path here: spec.containers.securityContext...
    with pytest.raises(ProtobufError, match="nested more than 4 deep"):
        decode(body, max_depth=4)
    deep = envelope(pod(s(2, container("main", s(7, s(1, "X") + s(3, s(3, s(1, s(1, "c")))))))))
    decode(deep, max_depth=8)  # envelope, pod, spec, container, env, valueFrom, ref, inline
    with pytest.raises(ProtobufError, match=r"spec.containers.env.valueFrom.configMapKeyRef.*7"):
        decode(deep, max_depth=7)


def test_repeated_fields_and_the_body_are_bounded() -> None:
    many = container("main", s(3, "x") * (k8sproto.MAX_REPEATED - 2))  # 2 already in container()
    decode(envelope(pod(s(2, many))))
    with pytest.raises(ProtobufError, match=r"spec.containers.command: more than 10000 entries"):
        decode(envelope(pod(s(2, many + s(3, "x")))))
    labels = b"".join(entry(11, "k", "v") for _ in range(k8sproto.MAX_REPEATED + 1))
    with pytest.raises(ProtobufError, match=r"metadata.labels: more than 10000 entries"):
        decode(envelope(pod(meta=labels)))
    packed = s(4, varint(1) * (k8sproto.MAX_REPEATED + 1))
    with pytest.raises(ProtobufError, match=r"supplementalGroups: more than 10000 entries"):
        decode(envelope(pod(s(2, container()), s(14, packed))))
    with pytest.raises(ProtobufError, match="larger than"):
        decode(MAGIC + b"\x00" * k8sproto.MAX_BODY)


# ------------------------------------------------------------------------------- fuzzing


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.booleans())
def test_random_bytes_raise_only_protobuf_error(data: bytes, with_magic: bool) -> None:
    body = MAGIC + data if with_magic else data
    try:
        doc = decode(body)
    except ProtobufError:
        return
    json.dumps(doc)  # whatever decodes is the JSON form: plain dicts, lists, str, int, bool


def fields(depth: int) -> st.SearchStrategy[bytes]:
    """Random but well-formed protobuf: fields of any number and wire type, some nested."""
    leaf = st.one_of(
        st.tuples(st.integers(1, 40), st.integers(0, 2**64 - 1)).map(lambda t: n(*t)),
        st.tuples(st.integers(1, 40), st.binary(max_size=12)).map(lambda t: s(*t)),
        st.tuples(st.integers(1, 40), st.text(max_size=8)).map(lambda t: s(*t)),
        st.integers(1, 40).map(lambda k: tag(k, 1) + b"\x01" * 8),
        st.integers(1, 40).map(lambda k: tag(k, 5) + b"\x01" * 4),
    )
    if depth == 0:
        return st.lists(leaf, max_size=6).map(b"".join)
    nested = st.tuples(st.integers(1, 40), fields(depth - 1)).map(lambda t: s(*t))
    return st.lists(st.one_of(leaf, nested), max_size=6).map(b"".join)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields(5), st.sampled_from([b"", b"\x00", b"\x80", b"\x0b"]))
def test_random_messages_raise_only_protobuf_error(pod_bytes: bytes, tail: bytes) -> None:
    for body in (envelope(pod_bytes + tail), MAGIC + pod_bytes + tail):
        try:
            doc = decode(body)
        except ProtobufError:
            continue
        json.dumps(doc)


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_a_damaged_real_body_raises_only_protobuf_error(data: st.DataObject) -> None:
    body = bytearray((DATA / "debug-copy-1.33.pb").read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(len(MAGIC), len(body) - 1))
        body[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(len(MAGIC), len(body)))
    with contextlib.suppress(ProtobufError):
        json.dumps(decode(bytes(body[:cut])))


# ------------------------------------------------------------------------------- the gateway

TOKEN = "secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROTOBUF = {**AUTH, "Content-Type": "application/vnd.kubernetes.protobuf"}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    runtime = ProcessRuntime(tmp_path / "pods")
    app = make_app(PodManager(runtime), TOKEN, StreamServer(runtime))
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        await runtime.close()


async def test_the_gateway_creates_and_replaces_a_pod_sent_as_protobuf(
    client: TestClient[Any, Any],
) -> None:
    body = envelope(pod(s(2, container()), meta=s(3, "default") + entry(11, "app", "x")))
    async with client.post("/api/v1/namespaces/default/pods", data=body, headers=PROTOBUF) as r:
        assert r.status == 201, await r.text()
        assert r.content_type == "application/json"  # the reply stays JSON
        created = await r.json()
    assert created["metadata"]["labels"] == {"app": "x"}
    assert created["spec"]["containers"][0]["command"] == ["sleep", "60"]

    # PUT: the served pod with one label changed, as a typed client sends it back.
    served = created["metadata"]
    created_at = datetime.strptime(served["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")
    meta = (
        s(3, "default")
        + s(5, served["uid"])
        + s(6, served["resourceVersion"])
        + s(8, n(1, calendar.timegm(created_at.timetuple())))
        + entry(11, "app", "y")
    )
    tolerations = b"".join(
        s(22, s(1, f"node.kubernetes.io/{key}") + s(2, "Exists") + s(4, "NoExecute") + n(5, 300))
        for key in ("not-ready", "unreachable")
    )
    spec = (
        s(2, container("main", s(13, "/dev/termination-log"), s(20, "File"), s(8, b""),
                       s(14, "Always")))
        + n(4, 30) + s(3, "Always") + s(6, "ClusterFirst") + s(19, "default-scheduler")
        + s(14, b"") + n(30, 1) + n(25, 0) + s(31, "PreemptLowerPriority")
        + s(8, "default") + s(9, "default") + tolerations + s(10, "streamsrv")
    )  # fmt: skip
    path = "/api/v1/namespaces/default/pods/p"
    async with client.put(path, data=envelope(pod(spec, meta=meta)), headers=PROTOBUF) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["metadata"]["labels"] == {"app": "y"}
    # A spec that is not the served one is refused as in JSON: the decoded spec is compared.
    meta = s(3, "default") + entry(11, "app", "z")
    async with client.put(path, data=envelope(pod(s(2, container()), meta=meta)),
                          headers=PROTOBUF) as r:  # fmt: skip
        assert r.status == 422
        assert "spec: Forbidden" in await r.text()

    async with client.delete("/api/v1/namespaces/default/pods/p", headers=AUTH) as r:
        assert r.status == 200


async def test_the_gateway_says_why_a_protobuf_body_is_refused(
    client: TestClient[Any, Any],
) -> None:
    async with client.post(
        "/api/v1/namespaces/default/pods", data=MAGIC + b"\x0b", headers=PROTOBUF
    ) as r:
        assert r.status == 400
        status = await r.json()
    assert status["message"] == (
        "the body of the request could not be decoded: typeMeta: groups (wire type 3) are "
        "not accepted"
    )
    async with client.post(
        "/api/v1/namespaces/default/pods",
        data=b"x",
        headers={**AUTH, "Content-Type": "application/cbor"},
    ) as r:
        assert r.status == 415
