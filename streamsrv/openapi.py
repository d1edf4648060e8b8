"""The OpenAPI documents kubectl reads before ``create``, ``apply`` and ``edit``, and the pod's
field names for the server's own field validation.

Only as much as kubectl needs (docs/architecture.md, "OpenAPI"): before it sends a manifest,
kubectl's query-parameter verifier looks for the PATCH operation on Pod (found by its
``x-kubernetes-group-version-kind``) and checks that it takes the ``fieldValidation`` query
parameter; finding it, kubectl leaves validation to the server instead of validating on its
side. kubectl 1.29+ reads OpenAPI v3 (JSON, ``/openapi/v3/api/v1``). kubectl 1.27 and 1.28
first load the OpenAPI **v2** document (``/openapi/v2``) as a protobuf ``openapi.v2.Document``
(gnostic's ``OpenAPIv2.proto``), and fail the command when it is missing; they then ask v3
and fall back to v2. Neither document has a schema (``definitions``): for a kind without one
kubectl skips client-side validation, so every manifest reaches the server as it was written.

The protobuf is encoded here by hand (varints and length-delimited fields, nothing else is
needed) from the same JSON document served to a JSON ``Accept``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

#: The type of the protobuf document. kubectl 1.27/1.28 ask for it with an older name
#: (``...spec.v2@v1.0+protobuf``), which is no valid media type: Go's MIME parser refuses it,
#: and client-go turns a response that carries it into an error. The apiserver answers that
#: request with this name too.
PROTOBUF_V2 = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"

_POD_GVK = {"group": "", "kind": "Pod", "version": "v1"}
_FIELD_VALIDATION_HELP = (
    "fieldValidation instructs the server on how to handle objects in the request containing "
    "unknown or duplicate fields: Ignore, Warn or Strict."
)
#: The patch types the server takes (kubectl 1.27's ``apply`` picks strategic merge from it).
PATCH_TYPES = [
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
]

# ------------------------------------------------------------------------------- v3

_FIELD_VALIDATION_V3 = {
    "name": "fieldValidation",
    "in": "query",
    "description": _FIELD_VALIDATION_HELP,
    "schema": {"type": "string", "uniqueItems": True},
}
#: ``/openapi/v3/api/v1``: the group-version document kubectl 1.29+ reads.
OPENAPI_V1: dict[str, Any] = {
    "openapi": "3.0.0",
    "info": {"title": "streamsrv", "version": "v1"},
    "paths": {
        "/api/v1/namespaces/{namespace}/pods": {
            "post": {
                "operationId": "createCoreV1NamespacedPod",
                "parameters": [_FIELD_VALIDATION_V3],
                "x-kubernetes-action": "post",
                "x-kubernetes-group-version-kind": _POD_GVK,
            },
        },
        "/api/v1/namespaces/{namespace}/pods/{name}": {
            # The operation kubectl's verifier inspects.
            "patch": {
                "operationId": "patchCoreV1NamespacedPod",
                "parameters": [_FIELD_VALIDATION_V3],
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": _POD_GVK,
            },
        },
    },
}
#: ``/openapi/v3``: where each group-version's document is.
OPENAPI_V3_ROOT = {"paths": {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1"}}}

# ------------------------------------------------------------------------------- v2

_FIELD_VALIDATION_V2 = {
    "name": "fieldValidation",
    "in": "query",
    "description": _FIELD_VALIDATION_HELP,
    "type": "string",
    "uniqueItems": True,
}
#: ``/openapi/v2`` (Swagger 2.0) as JSON; :data:`OPENAPI_V2_PROTOBUF` is the same document.
OPENAPI_V2: dict[str, Any] = {
    "swagger": "2.0",
    "info": {"title": "streamsrv", "version": "v1"},
    "paths": {
        "/api/v1/namespaces/{namespace}/pods": {
            "post": {
                "consumes": ["*/*"],
                "produces": ["application/json", "application/yaml"],
                "operationId": "createCoreV1NamespacedPod",
                "parameters": [_FIELD_VALIDATION_V2],
                "x-kubernetes-action": "post",
                "x-kubernetes-group-version-kind": _POD_GVK,
            },
        },
        "/api/v1/namespaces/{namespace}/pods/{name}": {
            "patch": {
                "consumes": PATCH_TYPES,
                "produces": ["application/json", "application/yaml"],
                "operationId": "patchCoreV1NamespacedPod",
                "parameters": [_FIELD_VALIDATION_V2],
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": _POD_GVK,
            },
        },
    },
}

# Protobuf wire format: a field is a key (number << 3 | wire type) then its value; strings and
# embedded messages are wire type 2 (a varint length, then the bytes), bools wire type 0.
# proto3 leaves out a field that has its default value (empty, false).
_VARINT, _LEN = 0, 2


def varint(n: int) -> bytes:
    """``n`` (not negative) as a base-128 varint, low group first."""
    if n < 0:
        raise ValueError("negative varint")
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def pb_bytes(number: int, payload: bytes) -> bytes:
    """A length-delimited field: a string's UTF-8 or an embedded message."""
    return _key(number, _LEN) + varint(len(payload)) + payload


def pb_string(number: int, text: str) -> bytes:
    return pb_bytes(number, text.encode()) if text else b""


def pb_bool(number: int, value: bool) -> bytes:
    return _key(number, _VARINT) + b"\x01" if value else b""


def _strings(number: int, values: list[str]) -> bytes:
    return b"".join(pb_bytes(number, v.encode()) for v in values)


def _vendor_extensions(number: int, obj: Mapping[str, Any]) -> bytes:
    """Each ``x-...`` key as a ``NamedAny`` {1 name, 2 Any {2 yaml}}; JSON text is YAML, and
    kubectl reads the group-version-kind with a YAML decoder."""
    return b"".join(
        pb_bytes(
            number,
            pb_string(1, key) + pb_bytes(2, pb_string(2, json.dumps(value, sort_keys=True) + "\n")),
        )
        for key, value in obj.items()
        if key.startswith("x-")
    )


def _check(obj: Mapping[str, Any], known: set[str], what: str) -> None:
    """Refuse a key this encoder does not write: the two forms must never differ."""
    extra = {k for k in obj if k not in known and not k.startswith("x-")}
    if extra:
        raise ValueError(f"{what}: cannot encode {sorted(extra)}")


def _parameter(p: Mapping[str, Any]) -> bytes:
    """ParametersItem {1 Parameter {2 NonBodyParameter {3 QueryParameterSubSchema {1 required,
    2 in, 3 description, 4 name, 6 type, 20 uniqueItems}}}}."""
    _check(p, {"name", "in", "description", "type", "uniqueItems", "required"}, "parameter")
    if p.get("in") != "query":
        raise ValueError("only query parameters are encoded")
    query = (
        pb_bool(1, bool(p.get("required")))
        + pb_string(2, "query")
        + pb_string(3, p.get("description", ""))
        + pb_string(4, p["name"])
        + pb_string(6, p.get("type", ""))
        + pb_bool(20, bool(p.get("uniqueItems")))
    )
    return pb_bytes(1, pb_bytes(2, pb_bytes(3, query)))


def _operation(op: Mapping[str, Any]) -> bytes:
    """Operation: 5 operationId, 6 produces, 7 consumes, 8 parameters, 13 vendor_extension."""
    _check(op, {"operationId", "produces", "consumes", "parameters"}, "operation")
    return (
        pb_string(5, op.get("operationId", ""))
        + _strings(6, op.get("produces", []))
        + _strings(7, op.get("consumes", []))
        + b"".join(pb_bytes(8, _parameter(p)) for p in op.get("parameters", []))
        + _vendor_extensions(13, op)
    )


#: PathItem's field number of each operation.
_METHODS = {"get": 2, "put": 3, "post": 4, "delete": 5, "options": 6, "head": 7, "patch": 8}


def encode_v2(doc: Mapping[str, Any]) -> bytes:
    """``doc`` (Swagger 2.0 JSON, the subset :data:`OPENAPI_V2` uses) as a protobuf
    ``openapi.v2.Document``; ValueError for anything it would leave out."""
    _check(doc, {"swagger", "info", "paths"}, "document")
    info = doc.get("info", {})
    _check(info, {"title", "version"}, "info")
    paths = b""
    for path, item in doc.get("paths", {}).items():
        _check(item, set(_METHODS), f"path {path}")
        body = b"".join(pb_bytes(_METHODS[method], _operation(op)) for method, op in item.items())
        paths += pb_bytes(2, pb_string(1, path) + pb_bytes(2, body))  # NamedPathItem
    return (
        pb_string(1, doc.get("swagger", ""))
        + pb_bytes(2, pb_string(1, info.get("title", "")) + pb_string(2, info.get("version", "")))
        + pb_bytes(8, paths)
    )


OPENAPI_V2_PROTOBUF = encode_v2(OPENAPI_V2)

# ------------------------------------------------------------------------------- handlers


def _json(data: Any) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode(), content_type="application/json"
    )


async def openapi_v2(request: web.Request) -> web.Response:
    """The protobuf document for a protobuf ``Accept`` (kubectl), else its JSON form."""
    if "protobuf" in request.headers.get("Accept", ""):
        return web.Response(body=OPENAPI_V2_PROTOBUF, content_type=PROTOBUF_V2)
    return _json(OPENAPI_V2)


async def openapi_v3_root(request: web.Request) -> web.Response:
    return _json(OPENAPI_V3_ROOT)


async def openapi_v3_core(request: web.Request) -> web.Response:
    return _json(OPENAPI_V1)


# ------------------------------------------------------------------------------- fields


def _fields(names: str, **objects: Any) -> dict[str, Any]:
    """The space-separated ``names`` as values, and ``objects`` as objects or lists."""
    return dict.fromkeys(names.split()) | objects


_OBJECT_META = _fields(
    "annotations creationTimestamp deletionGracePeriodSeconds deletionTimestamp finalizers "
    "generateName generation labels managedFields name namespace ownerReferences "
    "resourceVersion selfLink uid"
)
_CONTAINER = _fields(
    "name image command args workingDir envFrom resources resizePolicy restartPolicy "
    "restartPolicyRules volumeDevices livenessProbe readinessProbe startupProbe lifecycle "
    "terminationMessagePath terminationMessagePolicy imagePullPolicy securityContext stdin "
    "stdinOnce tty",
    ports=[_fields("name hostPort containerPort protocol hostIP")],
    env=[_fields("name value valueFrom")],
    volumeMounts=[
        _fields(
            "name readOnly recursiveReadOnly mountPath subPath mountPropagation subPathExpr "
            "bindMountOptions"
        )
    ],
)
_VOLUME = _fields(
    "name gcePersistentDisk awsElasticBlockStore gitRepo secret nfs iscsi glusterfs "
    "persistentVolumeClaim rbd flexVolume cinder cephfs flocker downwardAPI fc azureFile "
    "configMap vsphereVolume quobyte azureDisk photonPersistentDisk projected portworxVolume "
    "scaleIO storageos csi ephemeral image",
    emptyDir=_fields("medium sizeLimit mode"),
    hostPath=_fields("path type"),
)
_POD_SPEC = _fields(
    "restartPolicy terminationGracePeriodSeconds activeDeadlineSeconds dnsPolicy nodeSelector "
    "serviceAccountName serviceAccount automountServiceAccountToken nodeName hostNetwork "
    "hostPID hostIPC shareProcessNamespace securityContext imagePullSecrets hostname "
    "subdomain affinity schedulerName tolerations hostAliases priorityClassName priority "
    "dnsConfig readinessGates runtimeClassName enableServiceLinks preemptionPolicy overhead "
    "topologySpreadConstraints setHostnameAsFQDN os hostUsers schedulingGates resourceClaims "
    "resources hostnameOverride",
    volumes=[_VOLUME],
    initContainers=[_CONTAINER],
    containers=[_CONTAINER],
    ephemeralContainers=[_CONTAINER | {"targetContainerName": None}],
)
#: The field names of a ``v1 Pod``, as far as a typo is worth catching: a name maps to the
#: fields of its object (a dict), of each item of its list (a one-item list), or to None (a
#: value, or an object whose fields are not checked).
POD_FIELDS: dict[str, Any] = {
    "apiVersion": None,
    "kind": None,
    "metadata": _OBJECT_META,
    "spec": _POD_SPEC,
    "status": None,
}


def unknown_fields(manifest: Any, schema: Mapping[str, Any] = POD_FIELDS) -> list[str]:
    """The paths of fields ``manifest`` has and a ``v1 Pod`` does not, as the apiserver's
    strict decoding names them (``spec.containers[0].commandx``), in document order."""
    found: list[str] = []

    def walk(value: Any, fields: Any, where: str) -> None:
        if isinstance(fields, dict) and isinstance(value, dict):
            for key, inner in value.items():
                path = f"{where}.{key}" if where else str(key)
                if key not in fields:
                    found.append(path)
                else:
                    walk(inner, fields[key], path)
        elif isinstance(fields, list) and isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, fields[0], f"{where}[{i}]")

    walk(manifest, schema, "")
    return found


#: ``fieldValidation`` values (absent is Warn, the apiserver's default).
FIELD_VALIDATION = ("Ignore", "Strict", "Warn")


def field_validation(manifest: Any, directive: str | None) -> tuple[str | None, list[str]]:
    """What the ``fieldValidation`` query parameter asks of the server for ``manifest``, as
    (the 400's message or None, the warnings to send).

    ``Strict``: unknown fields fail the request (kubectl's default since it validates on the
    server); ``Warn`` (or none): each is a ``Warning: 299`` header; ``Ignore``: nothing.
    """
    directive = directive or "Warn"
    if directive not in FIELD_VALIDATION:
        supported = ", ".join(f'"{d}"' for d in FIELD_VALIDATION)
        return (
            f'fieldValidation: Unsupported value: "{directive[:80]}": '
            f"supported values: {supported}",
            [],
        )
    if directive == "Ignore":
        return None, []
    unknown = [f'unknown field "{path[:200]}"' for path in unknown_fields(manifest)[:20]]
    if not unknown:
        return None, []
    if directive == "Strict":
        return (
            'Pod in version "v1" cannot be handled as a Pod: strict decoding error: '
            + ", ".join(unknown),
            [],
        )
    return None, unknown


__all__ = [
    "FIELD_VALIDATION",
    "field_validation",
    "OPENAPI_V1",
    "OPENAPI_V2",
    "OPENAPI_V2_PROTOBUF",
    "POD_FIELDS",
    "PROTOBUF_V2",
    "encode_v2",
    "openapi_v2",
    "openapi_v3_core",
    "openapi_v3_root",
    "unknown_fields",
]
