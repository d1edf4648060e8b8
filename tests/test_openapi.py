"""The OpenAPI documents (streamsrv/openapi.py): the hand-encoded protobuf OpenAPI v2 document
read back by the real protobuf runtime, checked the way kubectl 1.27/1.28 check it, and the
pod's field names for strict field validation."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.json_format import MessageToDict, ParseDict

from streamsrv import openapi
from streamsrv.openapi import (
    OPENAPI_V1,
    OPENAPI_V2,
    OPENAPI_V2_PROTOBUF,
    encode_v2,
    field_validation,
    unknown_fields,
    varint,
)

# The messages of gnostic's OpenAPIv2.proto (package openapi.v2) that the document uses, with
# their field numbers and types as that file declares them; Any.value (a google.protobuf.Any)
# is left out, the document never sets it.
_F = descriptor_pb2.FieldDescriptorProto
_MESSAGES: dict[str, list[tuple[str, int, Any, str]]] = {
    # name: [(field, number, type, message type or "")]; every field optional or repeated below
    "Document": [("swagger", 1, _F.TYPE_STRING, ""), ("info", 2, _F.TYPE_MESSAGE, "Info"),
                 ("host", 3, _F.TYPE_STRING, ""), ("paths", 8, _F.TYPE_MESSAGE, "Paths")],
    "Info": [("title", 1, _F.TYPE_STRING, ""), ("version", 2, _F.TYPE_STRING, "")],
    "Paths": [("vendor_extension", 1, _F.TYPE_MESSAGE, "NamedAny"),
              ("path", 2, _F.TYPE_MESSAGE, "NamedPathItem")],
    "NamedPathItem": [("name", 1, _F.TYPE_STRING, ""), ("value", 2, _F.TYPE_MESSAGE, "PathItem")],
    "PathItem": [("_ref", 1, _F.TYPE_STRING, "")]
    + [(m, n, _F.TYPE_MESSAGE, "Operation") for m, n in (
        ("get", 2), ("put", 3), ("post", 4), ("delete", 5), ("options", 6), ("head", 7),
        ("patch", 8))],
    "Operation": [("tags", 1, _F.TYPE_STRING, ""), ("summary", 2, _F.TYPE_STRING, ""),
                  ("description", 3, _F.TYPE_STRING, ""), ("operation_id", 5, _F.TYPE_STRING, ""),
                  ("produces", 6, _F.TYPE_STRING, ""), ("consumes", 7, _F.TYPE_STRING, ""),
                  ("parameters", 8, _F.TYPE_MESSAGE, "ParametersItem"),
                  ("schemes", 10, _F.TYPE_STRING, ""), ("deprecated", 11, _F.TYPE_BOOL, ""),
                  ("vendor_extension", 13, _F.TYPE_MESSAGE, "NamedAny")],
    "ParametersItem": [("parameter", 1, _F.TYPE_MESSAGE, "Parameter")],
    "Parameter": [("non_body_parameter", 2, _F.TYPE_MESSAGE, "NonBodyParameter")],
    "NonBodyParameter": [
        ("query_parameter_sub_schema", 3, _F.TYPE_MESSAGE, "QueryParameterSubSchema")],
    "QueryParameterSubSchema": [("required", 1, _F.TYPE_BOOL, ""), ("in", 2, _F.TYPE_STRING, ""),
                                ("description", 3, _F.TYPE_STRING, ""),
                                ("name", 4, _F.TYPE_STRING, ""),
                                ("allow_empty_value", 5, _F.TYPE_BOOL, ""),
                                ("type", 6, _F.TYPE_STRING, ""),
                                ("unique_items", 20, _F.TYPE_BOOL, "")],
    "NamedAny": [("name", 1, _F.TYPE_STRING, ""), ("value", 2, _F.TYPE_MESSAGE, "Any")],
    "Any": [("yaml", 2, _F.TYPE_STRING, "")],
}  # fmt: skip
_REPEATED = {
    ("Paths", "vendor_extension"), ("Paths", "path"), ("Operation", "tags"),
    ("Operation", "produces"), ("Operation", "consumes"), ("Operation", "parameters"),
    ("Operation", "schemes"), ("Operation", "vendor_extension"),
}  # fmt: skip


def _document_class() -> Any:
    proto = descriptor_pb2.FileDescriptorProto(
        name="test_openapiv2.proto", package="openapi.v2", syntax="proto3"
    )
    for message, fields in _MESSAGES.items():
        m = proto.message_type.add(name=message)
        for name, number, kind, type_name in fields:
            repeated = (message, name) in _REPEATED
            f = m.field.add(
                name=name,
                number=number,
                type=kind,
                label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
            )
            if type_name:
                f.type_name = f".openapi.v2.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("openapi.v2.Document"))


Document = _document_class()


def parsed() -> Any:
    doc = Document()
    doc.ParseFromString(OPENAPI_V2_PROTOBUF)
    return doc


@pytest.mark.parametrize(
    ("n", "encoded"),
    [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"),
     (2**32, b"\x80\x80\x80\x80\x10")],
)  # fmt: skip
def test_varints(n: int, encoded: bytes) -> None:
    assert varint(n) == encoded


def test_the_protobuf_document_is_the_json_document() -> None:
    """Read back by the real protobuf runtime with gnostic's field numbers: every path,
    operation and parameter of the JSON form is there, and nothing else."""
    doc = parsed()
    assert doc.swagger == "2.0"
    assert (doc.info.title, doc.info.version) == ("streamsrv", "v1")
    as_dict = MessageToDict(doc, preserving_proto_field_name=True)
    # Nothing the runtime did not know as a field of its declared type: built again from
    # what it read, the document is the same bytes.
    again = ParseDict(as_dict, Document())
    assert again.SerializeToString(deterministic=True) == OPENAPI_V2_PROTOBUF
    paths = {p["name"]: p["value"] for p in as_dict["paths"]["path"]}
    assert set(paths) == set(OPENAPI_V2["paths"])
    for path, item in OPENAPI_V2["paths"].items():
        for method, op in item.items():
            got = paths[path][method]
            assert got["operation_id"] == op["operationId"]
            assert got["consumes"] == op["consumes"]
            assert got["produces"] == op["produces"]
            [param] = got["parameters"]
            query = param["parameter"]["non_body_parameter"]["query_parameter_sub_schema"]
            assert query["name"] == "fieldValidation" and query["in"] == "query"
            assert query["type"] == "string" and query["unique_items"] is True
            extensions = {
                e["name"]: yaml.safe_load(e["value"]["yaml"]) for e in got["vendor_extension"]
            }
            assert extensions == {k: v for k, v in op.items() if k.startswith("x-")}


def _supports_field_validation(doc: Any, gvk: dict[str, str]) -> bool | None:
    """kubectl 1.27's v2 check (cli-runtime's supportsQueryParam): the first PATCH operation
    whose group-version-kind extension is ``gvk`` must take ``fieldValidation``; None when no
    operation names the kind (kubectl then looks for Namespace, and CRDs)."""
    for path in doc.paths.path:
        patch = path.value.patch
        named = False
        for ext in patch.vendor_extension:
            if ext.name != "x-kubernetes-group-version-kind" or not ext.value.yaml:
                continue
            value = yaml.safe_load(ext.value.yaml)
            named = {k: str(v) for k, v in value.items()} == gvk
            break
        if not named:
            continue
        return any(
            p.parameter.non_body_parameter.query_parameter_sub_schema.name == "fieldValidation"
            for p in patch.parameters
        )
    return None


def test_kubectl_127_finds_field_validation_on_pods_only() -> None:
    doc = parsed()
    assert _supports_field_validation(doc, {"group": "", "kind": "Pod", "version": "v1"}) is True
    assert _supports_field_validation(doc, {"group": "", "kind": "Pod", "version": "v2"}) is None
    assert (
        _supports_field_validation(doc, {"group": "apps", "kind": "Deployment", "version": "v1"})
        is None
    )


def test_the_encoder_refuses_what_it_would_leave_out() -> None:
    with pytest.raises(ValueError, match="definitions"):
        encode_v2({"swagger": "2.0", "definitions": {}})
    with pytest.raises(ValueError, match="responses"):
        encode_v2({"paths": {"/p": {"get": {"operationId": "x", "responses": {}}}}})
    with pytest.raises(ValueError, match="query"):
        encode_v2({"paths": {"/p": {"get": {"parameters": [{"name": "n", "in": "path"}]}}}})


def test_v3_still_tells_kubectl_129_plus_the_same() -> None:
    patch = OPENAPI_V1["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {"group": "", "kind": "Pod", "version": "v1"}
    assert [p["name"] for p in patch["parameters"]] == ["fieldValidation"]


async def test_served_by_accept(aiohttp_client: Any) -> None:
    from aiohttp import web

    app = web.Application()
    app.router.add_get("/openapi/v2", openapi.openapi_v2)
    client = await aiohttp_client(app)
    pb = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"  # what kubectl 1.27 asks
    async with client.get("/openapi/v2", headers={"Accept": pb}) as resp:
        assert resp.status == 200
        # Go's MIME parser refuses an "@" in a media type: the apiserver's own name comes back.
        assert resp.headers["Content-Type"] == openapi.PROTOBUF_V2
        assert "@" not in resp.headers["Content-Type"]
        assert await resp.read() == OPENAPI_V2_PROTOBUF
    async with client.get("/openapi/v2", headers={"Accept": "application/json"}) as resp:
        assert resp.content_type == "application/json"
        assert json.loads(await resp.read()) == OPENAPI_V2


def manifest(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"containers": [{"name": "a", "image": "i"}]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": base | spec}


def test_a_pod_with_known_fields_only_has_none_unknown() -> None:
    doc = manifest(
        restartPolicy="Never",
        securityContext={"runAsUser": 1, "anything": "inside"},  # not checked inside
        volumes=[
            {"name": "v", "hostPath": {"path": "/", "type": ""}},
            {"name": "e", "emptyDir": {}},
        ],
        containers=[
            {
                "name": "a",
                "image": "i",
                "ports": [{"containerPort": 1, "protocol": "TCP"}],
                "env": [{"name": "A", "value": "b"}],
                "volumeMounts": [{"name": "v", "mountPath": "/v", "readOnly": True}],
                "terminationMessagePolicy": "File",
            }
        ],
        ephemeralContainers=[{"name": "d", "image": "i", "targetContainerName": "a"}],
    )
    doc["status"] = {"phase": "Running", "whatever": 1}
    doc["metadata"] |= {"labels": {"a": "b"}, "uid": "u", "resourceVersion": "1"}
    assert unknown_fields(doc) == []


def test_unknown_fields_are_named_as_the_apiserver_names_them() -> None:
    doc = manifest(
        containers=[{"name": "a", "image": "i", "commandx": ["sh"], "ports": [{"port": 80}]}],
        volumes=[{"name": "v", "hostPath": {"path": "/", "kind": "x"}}],
        nodename="n",
    )
    doc["metdata"] = {}
    assert unknown_fields(doc) == [
        "spec.containers[0].commandx",
        "spec.containers[0].ports[0].port",
        "spec.volumes[0].hostPath.kind",
        "spec.nodename",
        "metdata",
    ]


def test_field_validation_as_the_apiserver_answers_it() -> None:
    bad = manifest(containers=[{"name": "a", "image": "i", "commandx": ["sh"]}], nodename="n")
    error, warnings = field_validation(bad, "Strict")
    assert error == (
        'Pod in version "v1" cannot be handled as a Pod: strict decoding error: '
        'unknown field "spec.containers[0].commandx", unknown field "spec.nodename"'
    )
    assert warnings == []
    for directive in ("Warn", "", None):
        assert field_validation(bad, directive) == (
            None,
            ['unknown field "spec.containers[0].commandx"', 'unknown field "spec.nodename"'],
        )
    assert field_validation(bad, "Ignore") == (None, [])
    assert field_validation(manifest(), "Strict") == (None, [])
    error, _ = field_validation(manifest(), "strict")
    assert error == (
        'fieldValidation: Unsupported value: "strict": supported values: "Ignore", "Strict", "Warn"'
    )
