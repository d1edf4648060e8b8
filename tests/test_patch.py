"""streamsrv.patch: the three patch types of a pod's PATCH, and what a pod update may change.

The kubectl bodies below are what kubectl v1.32 sent (``kubectl label``, ``annotate``, ``edit``
and client-side ``apply``), recorded by a stand-in server on loopback. The RFC cases are the
appendices of RFC 7386 and RFC 6902; the ordering cases are upstream's strategic merge patch
test cases (apimachinery strategicpatch), on pod fields with the same tags.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsrv import pods
from streamsrv.errors import RequestError
from streamsrv.patch import (
    FIELD_IMMUTABLE,
    JSON_PATCH,
    MAX_ANNOTATIONS_SIZE,
    MAX_COPY_BYTES,
    MAX_DEPTH,
    MAX_LABELS,
    MAX_OPERATIONS,
    MERGE_PATCH,
    NOT_KEPT,
    SPEC_FORBIDDEN,
    STRATEGIC_MERGE_PATCH,
    TOO_DEEP,
    UNSUPPORTED_MESSAGE,
    InvalidPatch,
    UnsupportedPatch,
    apply_patch,
    json_patch,
    label_value_errors,
    merge_patch,
    patched_metadata,
    pod_update_causes,
    qualified_name_errors,
    strategic_merge_patch,
)


def pod(**meta: Any) -> dict[str, Any]:
    """A pod as the gateway renders one."""
    metadata: dict[str, Any] = {
        "name": "web",
        "namespace": "default",
        "uid": "0d6c6f34-2c4c-4c53-a3d5-3c8f9b1a7e11",
        "creationTimestamp": "2024-01-01T00:00:00Z",
        "resourceVersion": "1704067200000",
        "labels": {"app": "web"},
    }
    metadata.update(meta)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "nginx:1",
                    "ports": [{"containerPort": 80}],
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                },
                {"name": "side", "image": "busybox", "args": ["sleep", "1d"]},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
            "tolerations": [{"key": "a", "operator": "Exists"}],
            "terminationGracePeriodSeconds": 30,
            "nodeName": "streamsrv",
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "Ready", "status": "True"},
            ],
        },
    }


def smp(obj: dict[str, Any], patch: Any) -> dict[str, Any]:
    return apply_patch(obj, json.dumps(patch).encode(), STRATEGIC_MERGE_PATCH)


def names(items: list[dict[str, Any]], key: str = "name") -> list[Any]:
    return [item[key] for item in items]


def canonical(value: Any) -> str:
    """JSON text that tells 1 from 1.0 and true from 1 (Python's == does not)."""
    return json.dumps(value, sort_keys=True)


# --------------------------------------------------------------------------------------------
# Content types and decoding


def test_unknown_content_type_is_unsupported_with_the_apiservers_message() -> None:
    for ctype in ("application/apply-patch+yaml", "application/json", "text/plain", ""):
        with pytest.raises(UnsupportedPatch) as info:
            apply_patch(pod(), b"{}", ctype)
        assert str(info.value) == (
            "the body of the request was in an unknown format - accepted media types include: "
            "application/json-patch+json, application/merge-patch+json, "
            "application/strategic-merge-patch+json"
        )
        assert str(info.value) == UNSUPPORTED_MESSAGE
        assert info.value.content_type == ctype
        assert isinstance(info.value, RequestError)


def test_content_type_parameters_and_case_are_ignored() -> None:
    got = apply_patch(
        pod(), b'{"metadata":{"labels":{"a":"b"}}}', "Application/Merge-Patch+JSON; charset=utf-8"
    )
    assert got["metadata"]["labels"] == {"app": "web", "a": "b"}


@pytest.mark.parametrize("ctype", [JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH])
@pytest.mark.parametrize(
    "body", [b"", b"{", b"nope", b'{"a": NaN}', b"[Infinity]", b"\xef\xbb\xbf{}"]
)
def test_a_body_that_is_not_json_is_the_apiservers_400(ctype: str, body: bytes) -> None:
    with pytest.raises(InvalidPatch) as info:
        apply_patch(pod(), body, ctype)
    assert str(info.value) == "invalid JSON patch"
    assert info.value.status == 400
    assert isinstance(info.value, ValueError) and isinstance(info.value, RequestError)


def test_bytes_that_are_not_utf8_and_lone_surrogates_become_u_fffd_as_in_go() -> None:
    body = b'{"metadata":{"annotations":{"a":"x\xffy","b":"\\ud800"}}}'
    got = apply_patch(pod(), body, MERGE_PATCH)
    assert got["metadata"]["annotations"] == {"a": "x\ufffdy", "b": "\ufffd"}
    json.dumps(got).encode()  # encodable


def test_the_object_is_not_changed() -> None:
    before = pod()
    kept = copy.deepcopy(before)
    apply_patch(before, b'{"metadata":{"labels":{"app":null}}}', MERGE_PATCH)
    apply_patch(before, b'[{"op":"remove","path":"/spec/containers/0"}]', JSON_PATCH)
    smp(before, {"spec": {"containers": [{"name": "app", "image": "x"}]}})
    assert before == kept


# --------------------------------------------------------------------------------------------
# RFC 7386


RFC7386_APPENDIX_A = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC7386_APPENDIX_A)
def test_rfc7386_appendix_a(target: Any, patch: Any, result: Any) -> None:
    kept = copy.deepcopy(target)
    assert merge_patch(target, patch) == result
    assert target == kept


@pytest.mark.parametrize("body", [b"null", b"[]", b'["c"]', b'"bar"', b"1", b"true"])
def test_a_merge_patch_of_a_pod_must_be_an_object(body: bytes) -> None:
    with pytest.raises(InvalidPatch) as info:
        apply_patch(pod(), body, MERGE_PATCH)
    assert str(info.value) == "Invalid JSON Patch"  # evanphx/json-patch's ErrBadJSONPatch
    assert info.value.status == 400


# --------------------------------------------------------------------------------------------
# RFC 6902


RFC6902_APPENDIX_A = [
    (  # A.1 adding an object member
        {"foo": "bar"},
        [{"op": "add", "path": "/baz", "value": "qux"}],
        {"baz": "qux", "foo": "bar"},
    ),
    (  # A.2 adding an array element
        {"foo": ["bar", "baz"]},
        [{"op": "add", "path": "/foo/1", "value": "qux"}],
        {"foo": ["bar", "qux", "baz"]},
    ),
    (  # A.3 removing an object member
        {"baz": "qux", "foo": "bar"},
        [{"op": "remove", "path": "/baz"}],
        {"foo": "bar"},
    ),
    (  # A.4 removing an array element
        {"foo": ["bar", "qux", "baz"]},
        [{"op": "remove", "path": "/foo/1"}],
        {"foo": ["bar", "baz"]},
    ),
    (  # A.5 replacing a value
        {"baz": "qux", "foo": "bar"},
        [{"op": "replace", "path": "/baz", "value": "boo"}],
        {"baz": "boo", "foo": "bar"},
    ),
    (  # A.6 moving a value
        {"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
        [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
        {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}},
    ),
    (  # A.7 moving an array element
        {"foo": ["all", "grass", "cows", "eat"]},
        [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
        {"foo": ["all", "cows", "eat", "grass"]},
    ),
    (  # A.8 testing a value: success
        {"baz": "qux", "foo": ["a", 2, "c"]},
        [
            {"op": "test", "path": "/baz", "value": "qux"},
            {"op": "test", "path": "/foo/1", "value": 2},
        ],
        {"baz": "qux", "foo": ["a", 2, "c"]},
    ),
    (  # A.10 adding a nested member object
        {"foo": "bar"},
        [{"op": "add", "path": "/child", "value": {"grandchild": {}}}],
        {"foo": "bar", "child": {"grandchild": {}}},
    ),
    (  # A.11 ignoring unrecognized elements
        {"foo": "bar"},
        [{"op": "add", "path": "/baz", "value": "qux", "xyz": 123}],
        {"foo": "bar", "baz": "qux"},
    ),
    (  # A.14 ~ escape ordering
        {"/": 9, "~1": 10},
        [{"op": "test", "path": "/~01", "value": 10}],
        {"/": 9, "~1": 10},
    ),
    (  # A.16 adding an array value
        {"foo": ["bar"]},
        [{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}],
        {"foo": ["bar", ["abc", "def"]]},
    ),
]


@pytest.mark.parametrize(("doc", "patch", "result"), RFC6902_APPENDIX_A)
def test_rfc6902_appendix_a(doc: Any, patch: list[Any], result: Any) -> None:
    kept = copy.deepcopy(doc)
    assert canonical(json_patch(doc, patch)) == canonical(result)
    assert doc == kept


RFC6902_APPENDIX_A_ERRORS = [
    (  # A.9 testing a value: error
        {"baz": "qux"},
        [{"op": "test", "path": "/baz", "value": "bar"}],
        "testing value /baz failed: test failed",
    ),
    (  # A.12 adding to a nonexistent target
        {"foo": "bar"},
        [{"op": "add", "path": "/baz/bat", "value": "qux"}],
        'add operation does not apply: doc is missing path: "/baz/bat": missing value',
    ),
    (  # A.15 comparing strings and numbers
        {"/": 9, "~1": 10},
        [{"op": "test", "path": "/~01", "value": "10"}],
        "testing value /~01 failed: test failed",
    ),
]


@pytest.mark.parametrize(("doc", "patch", "message"), RFC6902_APPENDIX_A_ERRORS)
def test_rfc6902_appendix_a_errors(doc: Any, patch: list[Any], message: str) -> None:
    with pytest.raises(InvalidPatch) as info:
        json_patch(doc, patch)
    assert str(info.value) == message
    assert info.value.status == 422


def test_rfc6902_a13_an_operation_with_two_op_members_is_invalid() -> None:
    body = b'[{"op": "add", "path": "/baz", "value": "qux", "op": "remove"}]'
    with pytest.raises(InvalidPatch) as info:
        apply_patch(pod(), body, JSON_PATCH)
    assert str(info.value) == 'json patch duplicate field "op"'
    assert info.value.status == 400


def test_json_patch_of_a_pod_through_apply_patch() -> None:
    body = json.dumps(
        [
            {"op": "test", "path": "/metadata/name", "value": "web"},
            {"op": "add", "path": "/metadata/labels/tier", "value": "front"},
            {"op": "replace", "path": "/metadata/labels/app", "value": "api"},
            {"op": "add", "path": "/metadata/annotations", "value": {}},
            {"op": "copy", "from": "/metadata/labels/app", "path": "/metadata/annotations/was"},
            {"op": "move", "from": "/metadata/labels/tier", "path": "/metadata/labels/layer"},
            {"op": "add", "path": "/metadata/annotations/a~1b~0c", "value": "slash"},
        ]
    ).encode()
    got = apply_patch(pod(), body, JSON_PATCH)
    assert got["metadata"]["labels"] == {"app": "api", "layer": "front"}
    assert got["metadata"]["annotations"] == {"was": "api", "a/b~c": "slash"}


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        (
            [{"op": "remove", "path": "/nope"}],
            "error in remove for path: '/nope': "
            "Unable to remove nonexistent key: nope: missing value",
        ),
        (
            [{"op": "remove", "path": "/a/5"}],
            "error in remove for path: '/a/5': "
            "Unable to access invalid index: 5: invalid index referenced",
        ),
        (
            [{"op": "remove", "path": "/a/-"}],
            "error in remove for path: '/a/-': "
            "Unable to access invalid index: -: invalid index referenced",
        ),
        (
            [{"op": "remove", "path": "/a/01"}],
            "error in remove for path: '/a/01': value was not a proper array index: '01'",
        ),
        (
            [{"op": "add", "path": "/a/-1", "value": 0}],
            "error in add for path: '/a/-1': value was not a proper array index: '-1'",
        ),
        (
            [{"op": "add", "path": "/a/4", "value": 0}],
            "error in add for path: '/a/4': "
            "Unable to access invalid index: 4: invalid index referenced",
        ),
        (
            [{"op": "replace", "path": "/nope", "value": 1}],
            "replace operation does not apply: doc is missing key: /nope: missing value",
        ),
        (
            [{"op": "replace", "path": "/x/y", "value": 1}],
            "replace operation does not apply: doc is missing path: /x/y: missing value",
        ),
        (
            [{"op": "move", "from": "/nope", "path": "/b"}],
            "move operation does not apply: doc is missing from path: /nope: missing value",
        ),
        (
            [{"op": "move", "from": "/o", "path": "/o/p"}],
            "move operation does not apply: from path /o is a prefix of path /o/p",
        ),
        (
            [{"op": "copy", "from": "/o", "path": "/x/y"}],
            "copy operation does not apply: doc is missing destination path: /x/y: missing value",
        ),
        (
            [{"op": "test", "path": "/nope", "value": None}],
            "test operation does not apply: is missing path: /nope: missing value",
        ),
        ([{"op": "add", "path": "/b"}], "add operation, missing value field: missing value"),
        (
            [{"op": "add", "value": 1}],
            "add operation failed to decode path: operation missing path field: missing value",
        ),
        (
            [{"op": "add", "path": 7, "value": 1}],
            "add operation failed to decode path: "
            "json: cannot unmarshal number into Go value of type string",
        ),
        (
            [{"op": "copy", "path": "/b"}],
            "copy operation failed to decode from: operation, missing from field: missing value",
        ),
        ([{"op": "frobnicate", "path": "/a"}], "Unexpected kind: frobnicate"),
        ([{"path": "/a"}], "Unexpected kind: unknown"),
        (
            [{"op": "add", "path": "a", "value": 1}],
            'add operation: invalid JSON pointer "a": it must be empty or start with "/"',
        ),
        (
            [{"op": "add", "path": "/a~2", "value": 1}],
            'add operation: invalid JSON pointer "/a~2": "~" must be followed by "0" or "1"',
        ),
        (
            [{"op": "remove", "path": ""}],
            'remove operation does not apply: doc is missing path: "": missing value',
        ),
    ],
)
def test_json_patch_operations_that_do_not_apply(ops: list[Any], message: str) -> None:
    with pytest.raises(InvalidPatch) as info:
        json_patch({"a": [1, 2, 3], "o": {"p": 1}}, ops)
    assert str(info.value) == message
    assert info.value.status == 422


def test_json_patch_root_and_end_of_array() -> None:
    doc = {"a": [1]}
    assert json_patch(doc, [{"op": "replace", "path": "", "value": {"b": 2}}]) == {"b": 2}
    assert json_patch(doc, [{"op": "add", "path": "", "value": [3]}]) == [3]
    assert json_patch(doc, [{"op": "test", "path": "", "value": {"a": [1.0]}}]) == doc
    assert json_patch(doc, [{"op": "add", "path": "/a/1", "value": 2}]) == {"a": [1, 2]}
    assert json_patch(doc, [{"op": "move", "from": "/a", "path": "/a"}]) == doc
    assert json_patch({"": 1}, [{"op": "test", "path": "/", "value": 1}]) == {"": 1}
    with pytest.raises(InvalidPatch, match="testing value /a failed"):
        json_patch({"a": True}, [{"op": "test", "path": "/a", "value": 1}])


def test_json_patch_must_be_an_array_of_objects() -> None:
    with pytest.raises(InvalidPatch) as info:
        apply_patch(pod(), b'{"op": "add"}', JSON_PATCH)
    assert str(info.value) == "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
    assert info.value.status == 400
    with pytest.raises(InvalidPatch) as info:
        apply_patch(pod(), b'["add"]', JSON_PATCH)
    assert (
        str(info.value) == "json: cannot unmarshal string into Go value of type jsonpatch.Operation"
    )


def test_json_patch_that_leaves_no_object_is_refused() -> None:
    with pytest.raises(InvalidPatch) as info:
        apply_patch(pod(), b'[{"op": "replace", "path": "", "value": [1]}]', JSON_PATCH)
    assert str(info.value) == "the patched object is a JSON array, not a JSON object"
    assert info.value.status == 422


# --------------------------------------------------------------------------------------------
# Bounds


def test_more_than_10000_operations_are_the_apiservers_413() -> None:
    ops = [{"op": "test", "path": "/kind", "value": "Pod"}] * MAX_OPERATIONS
    assert apply_patch(pod(), json.dumps(ops).encode(), JSON_PATCH) == pod()
    with pytest.raises(InvalidPatch) as info:
        apply_patch(pod(), json.dumps([*ops, ops[0]]).encode(), JSON_PATCH)
    assert str(info.value) == "The allowed maximum operations in a JSON patch is 10000, got 10001"
    assert info.value.status == 413


@pytest.mark.parametrize("ctype", [JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH])
@pytest.mark.parametrize("depth", [MAX_DEPTH, MAX_DEPTH + 1, 5000, 1_000_000])
def test_nesting_deeper_than_100_is_refused(ctype: str, depth: int) -> None:
    nested = '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)  # `depth` objects deep
    if ctype == JSON_PATCH:
        body = f'[{{"op":"add","path":"/x","value":{nested}}}]'  # the array adds two levels
        ok = depth + 2 <= MAX_DEPTH
    else:
        body = nested
        ok = depth <= MAX_DEPTH
    if ok:
        apply_patch(pod(), body.encode(), ctype)
        return
    with pytest.raises(InvalidPatch) as info:
        apply_patch(pod(), body.encode(), ctype)
    assert str(info.value) == TOO_DEEP == "the patch is nested more than 100 levels deep"
    assert info.value.status == 400


def test_a_json_patch_cannot_nest_the_object_deeper_than_100() -> None:
    # Each copy of /a into itself nests it two levels deeper: a patch of shallow values.
    ops = [{"op": "add", "path": "/a", "value": {"b": {}}}]
    ops += [{"op": "copy", "from": "/a", "path": "/a/b/b"} for _ in range(50)]
    assert _depth_of(json_patch({}, ops[:40])) < MAX_DEPTH
    with pytest.raises(InvalidPatch) as info:
        json_patch({}, ops)
    assert str(info.value) == "the patched object is nested more than 100 levels deep"


def _depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth_of, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth_of, value), default=0)
    return 0


def test_copies_are_bounded_to_3_mib_in_all() -> None:
    doc = {"big": "x" * (1024 * 1024)}
    ops = [{"op": "copy", "from": "/big", "path": f"/c{i}"} for i in range(2)]
    assert len(json_patch(doc, ops)) == 3
    ops = [{"op": "copy", "from": "/big", "path": f"/c{i}"} for i in range(3)]
    with pytest.raises(InvalidPatch) as info:
        json_patch(doc, ops)
    assert str(info.value) == (
        "Unable to complete the copy, the accumulated size increase of copy is "
        f"{3 * (1024 * 1024 + 2)}, exceeding the limit {MAX_COPY_BYTES}"
    )
    # Copying the whole object into itself over and over: refused long before it explodes.
    ops = [{"op": "copy", "from": "", "path": f"/x{i}"} for i in range(64)]
    with pytest.raises(InvalidPatch, match="exceeding the limit 3145728"):
        json_patch(doc, ops)


# --------------------------------------------------------------------------------------------
# Strategic merge patch


def test_smp_merges_a_container_by_name() -> None:
    got = smp(pod(), {"spec": {"containers": [{"name": "side", "image": "busybox:2"}]}})
    side = got["spec"]["containers"][1]
    assert names(got["spec"]["containers"]) == ["app", "side"]
    assert side == {"name": "side", "image": "busybox:2", "args": ["sleep", "1d"]}


def test_smp_merges_nested_lists_by_their_own_keys() -> None:
    patch = {
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 443}],
                    "env": [{"name": "B", "value": "two"}, {"name": "A", "$patch": "delete"}],
                    "volumeMounts": [{"mountPath": "/data", "readOnly": True}],
                    "args": ["x"],
                }
            ]
        }
    }
    app = smp(pod(), patch)["spec"]["containers"][0]
    assert app["ports"] == [{"containerPort": 80, "name": "http"}, {"containerPort": 443}]
    assert app["env"] == [{"name": "B", "value": "two"}]
    assert app["volumeMounts"] == [{"name": "data", "mountPath": "/data", "readOnly": True}]
    assert app["args"] == ["x"]


def test_smp_adds_a_container_first_as_upstream_does() -> None:
    # k8s docs, "Update API Objects in Place Using kubectl patch": the patched-in container
    # is listed first.
    got = smp(pod(), {"spec": {"containers": [{"name": "new", "image": "redis"}]}})
    assert names(got["spec"]["containers"]) == ["new", "app", "side"]


def test_smp_deletes_a_container_with_patch_delete() -> None:
    got = smp(pod(), {"spec": {"containers": [{"name": "app", "$patch": "delete"}]}})
    assert names(got["spec"]["containers"]) == ["side"]
    # every item of that name, and nothing if there is none
    twice = pod()
    twice["spec"]["containers"].append({"name": "app", "image": "again"})
    got = smp(twice, {"spec": {"containers": [{"name": "app", "$patch": "delete"}]}})
    assert names(got["spec"]["containers"]) == ["side"]
    got = smp(pod(), {"spec": {"containers": [{"name": "gone", "$patch": "delete"}]}})
    assert names(got["spec"]["containers"]) == ["app", "side"]


def test_smp_labels_add_change_and_remove_with_null() -> None:
    got = smp(
        pod(labels={"app": "web", "tier": "x"}),
        {"metadata": {"labels": {"app": None, "tier": "y", "new": "z"}}},
    )
    assert got["metadata"]["labels"] == {"tier": "y", "new": "z"}


def test_smp_null_deletes_and_new_values_lose_their_nulls() -> None:
    got = smp(
        pod(), {"spec": {"nodeName": None, "securityContext": {"runAsUser": 1, "fsGroup": None}}}
    )
    assert "nodeName" not in got["spec"]
    assert got["spec"]["securityContext"] == {"runAsUser": 1}


def test_smp_list_without_merge_key_is_replaced() -> None:
    tolerations = [{"key": "b", "operator": "Exists", "effect": "NoSchedule"}]
    got = smp(pod(), {"spec": {"tolerations": tolerations}})
    assert got["spec"]["tolerations"] == tolerations
    got = smp(pod(), {"spec": {"containers": [{"name": "side", "args": ["true"]}]}})
    assert got["spec"]["containers"][1]["args"] == ["true"]


def test_smp_patch_replace_on_a_list_and_on_a_map() -> None:
    got = smp(
        pod(), {"spec": {"containers": [{"$patch": "replace"}, {"name": "only", "image": "x"}]}}
    )
    assert got["spec"]["containers"] == [{"name": "only", "image": "x"}]
    got = smp(pod(), {"spec": {"containers": [{"$patch": "replace"}]}})
    assert got["spec"]["containers"] == []
    got = smp(pod(), {"metadata": {"labels": {"$patch": "replace", "only": "this"}}})
    assert got["metadata"]["labels"] == {"only": "this"}


def test_smp_patch_delete_on_a_map_and_merge_is_the_default() -> None:
    got = smp(pod(), {"metadata": {"labels": {"$patch": "delete"}}})
    assert got["metadata"]["labels"] == {}
    got = smp(pod(), {"spec": {"affinity": {"$patch": "delete"}}})
    assert "affinity" not in got["spec"]
    got = smp(pod(), {"metadata": {"labels": {"$patch": "merge", "more": "x"}}})
    assert got["metadata"]["labels"] == {"app": "web", "more": "x"}
    got = smp(
        pod(),
        {
            "spec": {
                "containers": [
                    {"$patch": "merge"},
                    {"name": "app", "image": "y", "$patch": "merge"},
                ]
            }
        },
    )
    assert got["spec"]["containers"][0]["image"] == "y"
    assert "$patch" not in got["spec"]["containers"][0]


def test_smp_retain_keys_clears_what_it_does_not_list() -> None:
    patch = {
        "spec": {
            "volumes": [
                {
                    "$retainKeys": ["hostPath", "name"],
                    "emptyDir": None,
                    "hostPath": {"path": "/srv"},
                    "name": "data",
                }
            ]
        }
    }
    got = smp(pod(), patch)
    assert got["spec"]["volumes"] == [{"name": "data", "hostPath": {"path": "/srv"}}]
    # without the null, emptyDir goes all the same: it is not retained
    del patch["spec"]["volumes"][0]["emptyDir"]
    assert smp(pod(), patch)["spec"]["volumes"] == [{"name": "data", "hostPath": {"path": "/srv"}}]


def test_smp_delete_from_primitive_list_and_merged_finalizers() -> None:
    obj = pod(finalizers=["a", "b", "c"])
    got = smp(
        obj, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["b"], "finalizers": ["d"]}}
    )
    assert got["metadata"]["finalizers"] == ["d", "a", "c"]
    got = smp(obj, {"metadata": {"finalizers": ["c", "a"]}})  # a set: the patch's order first
    assert got["metadata"]["finalizers"] == ["b", "c", "a"]


def test_smp_owner_references_merge_by_uid() -> None:
    obj = pod(ownerReferences=[{"uid": "1", "kind": "A", "name": "a"}])
    got = smp(
        obj,
        {
            "metadata": {
                "ownerReferences": [
                    {"uid": "1", "name": "b"},
                    {"uid": "2", "kind": "B", "name": "c"},
                ]
            }
        },
    )
    assert got["metadata"]["ownerReferences"] == [
        {"uid": "1", "kind": "A", "name": "b"},
        {"uid": "2", "kind": "B", "name": "c"},
    ]


def test_smp_status_conditions_merge_by_type() -> None:
    got = smp(pod(), {"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
    assert got["status"]["conditions"] == [
        {"type": "Initialized", "status": "True"},
        {"type": "Ready", "status": "False"},
    ]


def test_smp_set_element_order_orders_a_merged_list() -> None:
    patch = {
        "spec": {
            "$setElementOrder/containers": [{"name": "side"}, {"name": "app"}],
            "containers": [{"name": "app", "image": "nginx:2"}],
        }
    }
    got = smp(pod(), patch)
    assert names(got["spec"]["containers"]) == ["side", "app"]
    assert got["spec"]["containers"][1]["image"] == "nginx:2"
    # alone, it only orders
    got = smp(pod(), {"spec": {"$setElementOrder/containers": [{"name": "side"}, {"name": "app"}]}})
    assert names(got["spec"]["containers"]) == ["side", "app"]
    # on a list without a merge key it is tolerated and does nothing
    got = smp(pod(), {"spec": {"$setElementOrder/tolerations": [{"key": "a"}]}})
    assert got["spec"]["tolerations"] == pod()["spec"]["tolerations"]


def test_smp_set_element_order_must_agree_with_the_patch_list() -> None:
    patch = {
        "spec": {
            "$setElementOrder/containers": [{"name": "app"}, {"name": "side"}],
            "containers": [{"name": "side", "image": "a"}, {"name": "app", "image": "b"}],
        }
    }
    with pytest.raises(InvalidPatch) as info:
        smp(pod(), patch)
    assert str(info.value) == (
        "spec.containers: The order in patch list:\n"
        "[map[image:a name:side] map[image:b name:app]]\n"
        " doesn't match $setElementOrder list:\n[map[name:app] map[name:side]]\n"
    )
    assert info.value.status == 422


# Upstream's cases (apimachinery strategicpatch patch_test.go: the three-way patch applied to
# "current" gives "result"), their mergingList on spec.containers (merge key name) and their
# mergingIntList on metadata.finalizers (a merged list of primitives).
UPSTREAM_ORDER_CASES = [
    (  # preserve the order from the patch in a merging list 2
        ["1", "2", "3"],
        {"containers": [{"name": "3", "value": "c"}, {"name": "1", "value": "a"}]},
        ["2", "3", "1"],
    ),
    (  # add an item in a list and preserve order
        ["1", "2"],
        {
            "$setElementOrder/containers": [{"name": "3"}, {"name": "1"}, {"name": "2"}],
            "containers": [{"name": "3"}],
        },
        ["3", "1", "2"],
    ),
    (  # set elements order in a list with server-only items
        ["1", "3", "4", "2", "9"],
        {
            "$setElementOrder/containers": [
                {"name": "4"},
                {"name": "2"},
                {"name": "3"},
                {"name": "1"},
            ]
        },
        ["4", "2", "3", "1", "9"],
    ),
    (  # set elements order in a list with server-only items 2
        ["1", "2", "9", "3", "4"],
        {
            "$setElementOrder/containers": [
                {"name": "2"},
                {"name": "1"},
                {"name": "4"},
                {"name": "3"},
            ]
        },
        ["2", "1", "9", "4", "3"],
    ),
    (  # set elements order in a list with server-only items 3
        ["1", "2", "7", "9", "8", "3", "4"],
        {
            "$setElementOrder/containers": [
                {"name": "2"},
                {"name": "1"},
                {"name": "4"},
                {"name": "3"},
            ]
        },
        ["2", "1", "7", "9", "8", "4", "3"],
    ),
]


@pytest.mark.parametrize(("current", "patch", "result"), UPSTREAM_ORDER_CASES)
def test_smp_orders_merged_lists_as_upstream(
    current: list[str], patch: dict[str, Any], result: list[str]
) -> None:
    obj = pod()
    obj["spec"]["containers"] = [{"name": n} for n in current]
    assert names(smp(obj, {"spec": patch})["spec"]["containers"]) == result


@pytest.mark.parametrize(
    ("current", "patch", "result"),
    [
        (  # add an item in a list of primitives and preserve order
            ["1", "4", "2"],
            {"$setElementOrder/finalizers": ["3", "1", "2"], "finalizers": ["3"]},
            ["3", "1", "4", "2"],
        ),
        (  # delete an item in a list of primitives and preserve order
            ["1", "2", "3"],
            {
                "$setElementOrder/finalizers": ["2", "1"],
                "$deleteFromPrimitiveList/finalizers": ["3"],
            },
            ["2", "1"],
        ),
        (  # add and delete an item in a int list and preserve order
            ["1", "2", "3"],
            {
                "$setElementOrder/finalizers": ["4", "2", "1"],
                "finalizers": ["4"],
                "$deleteFromPrimitiveList/finalizers": ["3"],
            },
            ["4", "2", "1"],
        ),
    ],
)
def test_smp_orders_primitive_lists_as_upstream(
    current: list[str], patch: dict[str, Any], result: list[str]
) -> None:
    assert smp(pod(finalizers=current), {"metadata": patch})["metadata"]["finalizers"] == result


@pytest.mark.parametrize(
    ("patch", "message", "status"),
    [
        (
            {"spec": {"containers": [{"image": "x"}]}},
            "spec.containers: map: map[image:x] does not contain declared merge key: name",
            422,
        ),
        (
            {"spec": {"containers": [{"$patch": "delete"}]}},
            "spec.containers: map: map[$patch:delete] does not contain declared merge key: name",
            422,
        ),
        (
            {"spec": {"containers": ["app"]}},
            "spec.containers: list element types are not identical: app is not a map",
            422,
        ),
        (
            {"spec": {"containers": [[{"name": "a"}]]}},
            "spec.containers: lists of lists are not supported",
            422,
        ),
        (
            {"spec": {"containers": [{"name": "app", "$patch": "nope"}]}},
            "spec.containers: unknown patch type: nope in map: map[$patch:nope name:app]",
            422,
        ),
        (
            {"metadata": {"labels": {"$patch": "drop"}}},
            "metadata.labels: unknown patch type: drop in map: map[$patch:drop]",
            422,
        ),
        (
            {"metadata": {"finalizers": [{"a": 1}]}},
            "metadata.finalizers: cannot merge lists without merge key for metadata.finalizers",
            422,
        ),
        (
            {"spec": {"tolerations": [{"key": "a", "$patch": "delete"}]}},
            "spec.tolerations: a list without a merge key cannot take $patch: delete",
            422,
        ),
        (
            {"spec": {"volumes": [{"name": "data", "$retainKeys": "name"}]}},
            "spec.volumes: invalid patch format of retainKeys",
            400,
        ),
        (
            {"spec": {"volumes": [{"name": "data", "hostPath": {}, "$retainKeys": ["name"]}]}},
            "spec.volumes: invalid patch format of retainKeys",
            400,
        ),
        (
            {"metadata": {"$deleteFromPrimitiveList/finalizers": "a"}},
            "invalid patch format of primitive list",
            400,
        ),
        (
            {"metadata": {"$deleteFromPrimitiveListfinalizers": ["a"]}},
            "invalid patch format of primitive list",
            400,
        ),
        (
            {"spec": {"$setElementOrder/containers": {"name": "a"}}},
            "invalid patch format of setElementOrder list",
            400,
        ),
        (
            {"spec": {"$setElementOrder/containers": ["app"]}},
            "spec.containers: map: app does not contain declared merge key: name",
            422,
        ),
    ],
)
def test_smp_malformed(patch: dict[str, Any], message: str, status: int) -> None:
    with pytest.raises(InvalidPatch) as info:
        smp(pod(), patch)
    assert str(info.value) == message
    assert info.value.status == status


def test_smp_must_be_an_object() -> None:
    with pytest.raises(InvalidPatch) as info:
        apply_patch(pod(), b"[]", STRATEGIC_MERGE_PATCH)
    assert (
        str(info.value)
        == "json: cannot unmarshal array into Go value of type map[string]interface {}"
    )
    assert info.value.status == 400


def test_smp_whole_object_directives() -> None:
    assert strategic_merge_patch(pod(), {"$patch": "delete"}) == {}
    assert strategic_merge_patch(pod(), {"$patch": "replace", "kind": "Pod"}) == {"kind": "Pod"}


# --------------------------------------------------------------------------------------------
# What kubectl sends (recorded from kubectl v1.32)


def test_kubectl_label_and_annotate_send_merge_patches_of_metadata() -> None:
    obj = pod()
    sent = [
        (
            '{"metadata":{"labels":{"tier":"front"}}}',
            {"app": "web", "tier": "front"},
            {},
        ),  # label pod web tier=front
        ('{"metadata":{"labels":{"app":null}}}', {"tier": "front"}, {}),  # label pod web app-
        (
            '{"metadata":{"labels":{"app":"v2"}}}',
            {"tier": "front", "app": "v2"},
            {},
        ),  # label --overwrite
        (
            '{"metadata":{"annotations":{"note":"hello world"}}}',
            {"tier": "front", "app": "v2"},
            {"note": "hello world"},
        ),
        (
            '{"metadata":{"annotations":{"note":null}}}',
            {"tier": "front", "app": "v2"},
            {},
        ),  # annotate note-
        (
            '{"metadata":{"annotations":{}}}',
            {"tier": "front", "app": "v2"},
            {},
        ),  # annotate of what is not there
    ]
    for body, labels, notes in sent:
        new = apply_patch(obj, body.encode(), MERGE_PATCH)
        assert pod_update_causes(obj, new) == []
        assert patched_metadata(new) == (labels, notes)
        obj = new


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
APPLIED_1 = (
    '{"apiVersion":"v1","kind":"Pod","metadata":{"annotations":{},"creationTimestamp":null,'
    '"labels":{"app":"web","tier":"front"},"name":"web","namespace":"default"},"spec":'
    '{"containers":[{"image":"nginx:1","name":"app","ports":[{"containerPort":80}]}]}}\n'
)
APPLIED_2 = APPLIED_1.replace("front", "back").replace("nginx:1", "nginx:2")


def test_kubectl_apply_of_labels_is_a_valid_update() -> None:
    # The first `kubectl apply -f` of a manifest (from `kubectl run --dry-run -o yaml`, whence
    # the creationTimestamp: null) over a pod that has no last-applied annotation.
    body = json.dumps(
        {
            "metadata": {
                "annotations": {LAST_APPLIED: APPLIED_1},
                "creationTimestamp": None,
                "labels": {"tier": "front"},
            }
        }
    )
    obj = pod()
    new = apply_patch(obj, body.encode(), STRATEGIC_MERGE_PATCH)
    assert "creationTimestamp" not in new["metadata"]  # the apiserver keeps the old one
    assert pod_update_causes(obj, new) == []
    assert patched_metadata(new) == ({"app": "web", "tier": "front"}, {LAST_APPLIED: APPLIED_1})


def test_kubectl_apply_of_a_new_image_is_refused_with_the_apiservers_message() -> None:
    obj = pod(annotations={LAST_APPLIED: APPLIED_1}, labels={"app": "web", "tier": "front"})
    body = json.dumps(
        {
            "metadata": {
                "annotations": {LAST_APPLIED: APPLIED_2},
                "creationTimestamp": None,
                "labels": {"tier": "back"},
            },
            "spec": {
                "$setElementOrder/containers": [{"name": "app"}],
                "containers": [{"image": "nginx:2", "name": "app"}],
            },
        }
    )
    new = apply_patch(obj, body.encode(), STRATEGIC_MERGE_PATCH)
    assert names(new["spec"]["containers"]) == ["app", "side"]
    assert new["spec"]["containers"][0]["image"] == "nginx:2"
    assert new["spec"]["containers"][0]["ports"] == [{"containerPort": 80}]
    assert new["metadata"]["labels"] == {"app": "web", "tier": "back"}
    causes = pod_update_causes(obj, new)
    assert causes == [("spec", SPEC_FORBIDDEN + "\nchanged: spec.containers[0].image")]
    assert causes[0][1].startswith(
        "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
        "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` "
        "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
        "(allow it to be set to 1 if it was previously negative); streamsrv does not change "
        "images"
    )


def test_kubectl_apply_that_changes_a_volume_source_sends_retain_keys() -> None:
    obj = pod(annotations={LAST_APPLIED: "{}"})
    body = json.dumps(
        {
            "metadata": {
                "annotations": {LAST_APPLIED: "{}\n"},
                "labels": {"app": None, "tier": "x"},
            },
            "spec": {
                "$setElementOrder/volumes": [{"name": "data"}],
                "volumes": [
                    {
                        "$retainKeys": ["hostPath", "name"],
                        "emptyDir": None,
                        "hostPath": {"path": "/srv"},
                        "name": "data",
                    }
                ],
            },
        }
    )
    new = apply_patch(obj, body.encode(), STRATEGIC_MERGE_PATCH)
    assert new["spec"]["volumes"] == [{"name": "data", "hostPath": {"path": "/srv"}}]
    assert patched_metadata(new)[0] == {"tier": "x"}
    assert [f for f, _ in pod_update_causes(obj, new)] == ["spec"]


def test_kubectl_edit_sends_what_was_edited() -> None:
    obj = pod()
    new = apply_patch(obj, b'{"metadata":{"labels":{"edited":"yes"}}}', STRATEGIC_MERGE_PATCH)
    assert pod_update_causes(obj, new) == []
    assert patched_metadata(new) == ({"app": "web", "edited": "yes"}, {})
    body = (
        b'{"spec":{"$setElementOrder/containers":[{"name":"app"}],'
        b'"containers":[{"image":"nginx:3","name":"app"}]}}'
    )
    new = apply_patch(obj, body, STRATEGIC_MERGE_PATCH)
    assert [f for f, _ in pod_update_causes(obj, new)] == ["spec"]


# --------------------------------------------------------------------------------------------
# Update causes


def test_an_unchanged_pod_and_ignored_fields_have_no_cause() -> None:
    obj = pod()
    assert pod_update_causes(obj, pod()) == []
    new = pod(
        resourceVersion="9",
        generation=3,
        managedFields=[{"manager": "x"}],
        selfLink="/x",
        unknown="z",
    )
    new["status"] = {"phase": "Failed"}
    new["spec"]["nodeSelector"] = {}  # empty is as good as absent (semantic equality)
    new["spec"]["affinity"] = None
    assert pod_update_causes(obj, new) == []


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [
        ("name", "other", '"other"'),
        ("namespace", "kube-system", '"kube-system"'),
        ("uid", "1234", '"1234"'),
        ("creationTimestamp", "2020-01-01T00:00:00Z", '"2020-01-01T00:00:00Z"'),
        ("deletionGracePeriodSeconds", 0, "0"),
    ],
)
def test_immutable_metadata(field: str, value: Any, shown: str) -> None:
    new = pod(**{field: value})
    assert pod_update_causes(pod(), new) == [
        (f"metadata.{field}", f"Invalid value: {shown}: field is immutable")
    ]
    assert FIELD_IMMUTABLE == "field is immutable"


def test_metadata_the_apiserver_fills_in_may_be_left_out_but_the_name() -> None:
    new = pod()
    for field in ("namespace", "uid", "creationTimestamp"):
        del new["metadata"][field]
    assert pod_update_causes(pod(), new) == []
    del new["metadata"]["name"]
    assert pod_update_causes(pod(), new) == [
        ("metadata.name", 'Invalid value: "": field is immutable')
    ]


def test_metadata_streamsrv_does_not_keep_is_refused() -> None:
    new = pod(finalizers=["x"], ownerReferences=[{"uid": "1"}], generateName="web-")
    assert pod_update_causes(pod(), new) == [
        ("metadata.generateName", NOT_KEPT),
        ("metadata.finalizers", NOT_KEPT),
        ("metadata.ownerReferences", NOT_KEPT),
    ]
    assert pod_update_causes(pod(), pod(finalizers=[], generateName="")) == []


def test_any_spec_change_is_forbidden() -> None:
    changes: tuple[dict[str, Any], ...] = (
        {"terminationGracePeriodSeconds": 5},
        {"tolerations": [{"key": "a", "operator": "Exists"}, {"key": "b", "operator": "Exists"}]},
        {"activeDeadlineSeconds": 10},
        {"nodeName": None},
        {"containers": []},
    )
    for change in changes:
        new = pod()
        new["spec"].update(change)
        causes = pod_update_causes(pod(), new)
        assert [f for f, _ in causes] == ["spec"], change
        assert causes[0][1].startswith(SPEC_FORBIDDEN + "\nchanged: spec.")
    new = pod()
    new["spec"] = "x"
    assert pod_update_causes(pod(), new) == [("spec", SPEC_FORBIDDEN + "\nchanged: spec")]


def test_bad_label_key_and_value() -> None:
    long_name = "a" * 64
    new = pod(
        labels={
            "-bad": "ok",
            "example.com/" + long_name: "ok",
            "Bad_Prefix/x": "ok",
            "a/b/c": "ok",
            "ok": "v v",
            "ok2": "v" * 64,
        }
    )
    name_error = (
        "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
        "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex "
        "used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
    )
    value_error = (
        "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' "
        "or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
        "'my_value',  or '12345', regex used for validation is "
        "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
    )
    prefix_error = (
        "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
        "characters, '-' or '.', and must start and end with an alphanumeric character (e.g. "
        "'example.com', regex used for validation is "
        r"'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    )
    key_error = (
        "a valid label key must consist of alphanumeric characters, '-', '_' or '.', and must "
        "start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or "
        "'123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') "
        "with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
    )
    assert pod_update_causes(pod(), new) == [
        ("metadata.labels", f'Invalid value: "-bad": {name_error}'),
        (
            "metadata.labels",
            f'Invalid value: "example.com/{long_name}": name part must be no more than 63 bytes',
        ),
        ("metadata.labels", f'Invalid value: "Bad_Prefix/x": {prefix_error}'),
        ("metadata.labels", f'Invalid value: "a/b/c": {key_error}'),
        ("metadata.labels", f'Invalid value: "v v": {value_error}'),
        ("metadata.labels", f'Invalid value: "{"v" * 64}": must be no more than 63 bytes'),
    ]


def test_label_rules() -> None:
    for key in ("a", "A.b-c_d", "example.com/x", "a.b.c/" + "x" * 63, "k8s.io/Z9"):
        assert qualified_name_errors(key) == [], key
    assert qualified_name_errors("") == [
        "name part must be non-empty",
        qualified_name_errors("-")[0],
    ]
    assert qualified_name_errors("/a") == ["prefix part must be non-empty"]
    assert (
        qualified_name_errors("x" * 254 + "/a")[0] == "prefix part must be no more than 253 bytes"
    )
    for value in ("", "a", "A-b_c.d", "v" * 63):
        assert label_value_errors(value) == [], value
    assert len(label_value_errors("-a")) == 1
    assert label_value_errors("é") == [label_value_errors("-a")[0]]
    assert label_value_errors("é" * 32) == [
        "must be no more than 63 bytes",
        label_value_errors("-a")[0],
    ]


def test_annotations_keys_any_case_and_total_size() -> None:
    assert pod_update_causes(pod(), pod(annotations={"Example.COM/Key": "any value at all"})) == []
    causes = pod_update_causes(pod(), pod(annotations={"a b": "x"}))
    assert [f for f, _ in causes] == ["metadata.annotations"]
    assert causes[0][1].startswith('Invalid value: "a b": name part must consist of')
    just = {"a": "x" * (MAX_ANNOTATIONS_SIZE - 1)}
    assert pod_update_causes(pod(), pod(annotations=just)) == []
    over = {"a": "x" * (MAX_ANNOTATIONS_SIZE - 1), "b": ""}
    assert pod_update_causes(pod(), pod(annotations=over)) == [
        ("metadata.annotations", "Too long: may not be more than 262144 bytes")
    ]


def test_non_string_labels_are_causes_not_crashes() -> None:
    new = pod(labels={"a": 1, "b": None, "c": "ok"}, annotations=["x"])
    assert pod_update_causes(pod(), new) == [
        ("metadata.labels", "Invalid value: 1: must be a string"),
        ("metadata.annotations", "Invalid value: must be a map of strings to strings"),
    ]
    assert patched_metadata(new) == ({"b": "", "c": "ok"}, {})
    assert patched_metadata({"metadata": "x"}) == ({}, {})
    assert patched_metadata({}) == ({}, {})


def test_too_many_labels_as_pods_counts_them() -> None:
    assert MAX_LABELS == pods.MAX_LABELS
    assert MAX_ANNOTATIONS_SIZE == pods.MAX_ANNOTATIONS_SIZE
    many = {f"l{i}": "v" for i in range(MAX_LABELS + 1)}
    assert pod_update_causes(pod(), pod(labels=many)) == [
        ("metadata.labels", "Too many: 65: must have at most 64")
    ]


def test_metadata_and_kind_of_the_wrong_shape() -> None:
    new = pod()
    new["metadata"] = ["x"]
    causes = pod_update_causes(pod(), new)
    assert causes[0] == ("metadata", 'Invalid value: ["x"]: must be an object')
    new = pod()
    new["kind"] = "Service"
    assert pod_update_causes(pod(), new) == [
        ("kind", "Invalid value: only apiVersion v1, kind Pod is served")
    ]


# --------------------------------------------------------------------------------------------
# Properties


#: JSON's scalars but null, drawn as such: filtering null out of every leaf made Hypothesis
#: discard enough drawn values to fail its filter_too_much health check in one CI run.
JSON_NON_NULL = (
    st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
JSON_SCALARS = st.none() | JSON_NON_NULL
KEYS = st.text(max_size=4)


def json_values(nulls_in_objects: bool) -> st.SearchStrategy[Any]:
    """JSON values; without nulls as object members when a merge patch must express them
    (RFC 7386 cannot: null means delete)."""
    member = JSON_SCALARS if nulls_in_objects else JSON_NON_NULL
    return st.recursive(
        member,
        lambda inner: (
            st.lists(inner | st.none(), max_size=4) | st.dictionaries(KEYS, inner, max_size=4)
        ),
        max_leaves=20,
    )


OBJECTS = st.dictionaries(KEYS, json_values(nulls_in_objects=False), max_size=5)


def merge_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The RFC 7386 patch that makes ``b`` of ``a`` (what kubectl's CreateMergePatch makes)."""
    patch: dict[str, Any] = {k: None for k in a if k not in b}
    for key, value in b.items():
        if key in a and canonical(a[key]) == canonical(value):
            continue
        if isinstance(value, dict) and isinstance(a.get(key), dict):
            patch[key] = merge_diff(a[key], value)
        else:
            patch[key] = value
    return patch


@given(OBJECTS, OBJECTS)
@settings(max_examples=200)
def test_a_merge_patch_made_as_the_diff_of_two_objects_makes_the_second(
    a: dict[str, Any], b: dict[str, Any]
) -> None:
    patch = merge_diff(a, b)
    assert canonical(merge_patch(a, patch)) == canonical(b)
    body = json.dumps(patch).encode()
    assert canonical(apply_patch(a, body, MERGE_PATCH)) == canonical(b)


@given(OBJECTS, KEYS, json_values(nulls_in_objects=True), st.data())
@settings(max_examples=200)
def test_a_json_patch_of_add_then_remove_is_identity(
    doc: dict[str, Any], key: str, value: Any, data: st.DataObject
) -> None:
    pointer = "/" + key.replace("~", "~0").replace("/", "~1")
    if key not in doc:
        ops = [{"op": "add", "path": pointer, "value": value}, {"op": "remove", "path": pointer}]
        assert canonical(json_patch(doc, ops)) == canonical(doc)
    # and into an array anywhere from its start to its end ("-")
    items = data.draw(st.lists(JSON_SCALARS, max_size=5))
    at = data.draw(st.integers(0, len(items)))
    token = data.draw(st.sampled_from([str(at), "-"] if at == len(items) else [str(at)]))
    with_list = {**doc, "list": items}
    ops = [
        {"op": "add", "path": f"/list/{token}", "value": value},
        {"op": "remove", "path": f"/list/{at}"},
    ]
    assert canonical(apply_patch(with_list, json.dumps(ops).encode(), JSON_PATCH)) == canonical(
        with_list
    )


@given(st.dictionaries(KEYS, st.none() | st.text(max_size=8), max_size=5))
def test_a_strategic_patch_of_labels_is_the_merge_patch(labels: dict[str, Any]) -> None:
    patch = {"metadata": {"labels": labels}}
    body = json.dumps(patch).encode()
    assert apply_patch(pod(), body, STRATEGIC_MERGE_PATCH) == apply_patch(pod(), body, MERGE_PATCH)
