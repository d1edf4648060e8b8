"""An apiserver-compatible front for kubectl and the Python client: pods by name.

It serves the discovery documents kubectl reads (``/api``, ``/apis``, ``/api/v1``), pod list,
get, create and delete in Kubernetes JSON (and the ``Table`` form ``kubectl get`` asks for), and
every error as a ``metav1.Status``. Every ``/api`` route needs the bearer token written into
the kubeconfig; the gateway is the only place that knows pods by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime
from typing import Any

import yaml
from aiohttp import web

from . import k8sproto
from . import patch as patching
from .cluster import add_cluster_routes
from .controller import PodController
from .events import EventStore, event_fields
from .logs import InvalidLogOptions, LogOptions, read_log
from .openapi import field_validation, openapi_v2, openapi_v3_core, openapi_v3_root
from .podmanager import Pod, PodExists, PodManager, RemoteStreams
from .pods import DEFAULT_CONTAINER_ANNOTATION, ContainerSpec, InvalidPod, parse_pod
from .protocol import channels
from .protocol.status import kube_status
from .proxy import ProxyStats, proxy_upgrade
from .recording import token_identity
from .requests import (
    AnyRequest,
    InvalidRequest,
    Kind,
    Origin,
    PortForwardRequest,
    attach_request,
    exec_request,
    kind_of,
)
from .runtime.base import BackendError, EngineUnavailable, ImageNotFound
from .selectors import (
    FieldTerms,
    UnsupportedField,
    fields_match,
    matches_labels,
    parse_field_selector,
)
from .server import StreamServer, peer
from .tokens import CacheFull
from .transport import is_websocket
from .watch import Change, Hub, TooManyWatchers
from .watchhttp import BadWatch, serve_watch

log = logging.getLogger(__name__)

MANAGER = web.AppKey("manager", PodManager)
TOKEN = web.AppKey("token", str)
STREAMS = web.AppKey("streams", StreamServer)
HUB = web.AppKey("hub", Hub)
EVENTS = web.AppKey("events", EventStore)
CONTROLLER = web.AppKey("controller", PodController)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "AlreadyExists",
    410: "Expired",
    413: "RequestEntityTooLarge",
    429: "TooManyRequests",
    415: "UnsupportedMediaType",
    422: "Invalid",
    500: "InternalError",
    503: "ServiceUnavailable",
}
#: Routes that answer without the bearer token: they reveal nothing (the stream server's own
#: one-time URLs carry their token in the path; the browser page is static, and ``/`` only
#: redirects to it).
PUBLIC = ("/healthz", "/")
#: Everything under these needs the token, as do /version and /metrics (session counts).
PROTECTED_PREFIXES = ("/api", "/openapi")
PROTECTED = ("/version", "/metrics")
RETRY_AFTER = "5"  # seconds, on a 503 while the engine is unavailable


def api_status(
    code: int, message: str, *, reason: str | None = None, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A ``metav1.Status`` failure body; the reason defaults to the one for ``code``."""
    return kube_status(code, reason or _REASONS.get(code, "Unknown"), message, details=details)


class StatusError(Exception):
    """Raised by a handler; the middleware answers with the Status body."""

    def __init__(
        self, code: int, message: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(message)
        self.body = api_status(code, message, **kwargs)
        self.code = code
        self.headers = headers or {}


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(data, separators=(",", ":")).encode(),
        content_type="application/json",
    )


def not_found(name: str) -> StatusError:
    return StatusError(404, f'pods "{name}" not found', details={"name": name, "kind": "pods"})


def needs_token(path: str) -> bool:
    return path.startswith(PROTECTED_PREFIXES) or path in PROTECTED


@web.middleware
async def auth_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer token for every route that reveals anything; every failure becomes a Status.

    A runtime whose engine cannot be reached is a 503 naming it (with ``Retry-After``); any
    other runtime failure, and any bug of ours, a 500 Status with a message: never aiohttp's
    bare "Server got itself in trouble" page.
    """
    if needs_token(request.path):
        expected = request.app[TOKEN]
        got = request.headers.get("Authorization", "")
        scheme, _, token = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), expected.encode()
        ):
            return _json(api_status(401, "Unauthorized"), 401)
    try:
        return await handler(request)
    except StatusError as exc:
        resp = _json(exc.body, exc.code)
        resp.headers.update(exc.headers)
        return resp
    except web.HTTPException as exc:
        if exc.status < 400 or not request.path.startswith("/api"):
            raise
        return _json(api_status(exc.status, exc.reason), exc.status)
    except EngineUnavailable as exc:
        log.warning("%s %s: %s", request.method, request.path, exc)
        resp = _json(api_status(503, str(exc)), 503)
        resp.headers["Retry-After"] = RETRY_AFTER
        return resp
    except BackendError as exc:
        log.warning("%s %s: %s", request.method, request.path, exc)
        return _json(api_status(500, str(exc)), 500)
    except ConnectionError as exc:
        # The client left (during an upgrade, say). A response to nobody: aiohttp drops it
        # quietly, where a raised error would be logged with a traceback.
        log.debug("%s %s: the client left: %s", request.method, request.path, exc)
        return web.Response(status=499, text="client closed request\n")
    except Exception as exc:
        log.exception("%s %s failed", request.method, request.path)
        return _json(api_status(500, f"internal error: {exc!r}"), 500)


# ------------------------------------------------------------------------------- discovery

#: The ``/api/v1`` resources, in the apiserver's order and wording; each lists only the verbs
#: streamsrv serves (nodes and namespaces are read-only: streamsrv/cluster.py; ephemeral
#: containers are answered with the 404 of a cluster that has none).
POD_RESOURCES: list[dict[str, Any]] = [
    {
        "name": "events",
        "singularName": "event",
        "namespaced": True,
        "kind": "Event",
        "verbs": ["get", "list", "watch"],
        "shortNames": ["ev"],
    },
    {
        "name": "namespaces",
        "singularName": "namespace",
        "namespaced": False,
        "kind": "Namespace",
        "verbs": ["get", "list"],
        "shortNames": ["ns"],
    },
    {
        "name": "nodes",
        "singularName": "node",
        "namespaced": False,
        "kind": "Node",
        "verbs": ["get", "list"],
        "shortNames": ["no"],
    },
    {
        "name": "pods",
        "singularName": "pod",
        "namespaced": True,
        "kind": "Pod",
        "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        "shortNames": ["po"],
        "categories": ["all"],
    },
    {
        "name": "pods/attach",
        "singularName": "",
        "namespaced": True,
        "kind": "PodAttachOptions",
        "verbs": ["create", "get"],
    },
    {
        "name": "pods/ephemeralcontainers",
        "singularName": "",
        "namespaced": True,
        "kind": "Pod",
        "verbs": ["get", "patch", "update"],
    },
    {
        "name": "pods/exec",
        "singularName": "",
        "namespaced": True,
        "kind": "PodExecOptions",
        "verbs": ["create", "get"],
    },
    {
        "name": "pods/log",
        "singularName": "",
        "namespaced": True,
        "kind": "Pod",
        "verbs": ["get"],
    },
    {
        "name": "pods/portforward",
        "singularName": "",
        "namespaced": True,
        "kind": "PodPortForwardOptions",
        "verbs": ["create", "get"],
    },
]


async def api_versions(request: web.Request) -> web.Response:
    return _json(
        {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": request.host}
            ],
        }
    )


async def api_groups(request: web.Request) -> web.Response:
    return _json({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})


async def api_v1(request: web.Request) -> web.Response:
    return _json({"kind": "APIResourceList", "groupVersion": "v1", "resources": POD_RESOURCES})


async def version(request: web.Request) -> web.Response:
    from . import __version__

    return _json(
        {
            "major": "1",
            "minor": "33",
            "gitVersion": f"v1.33.0-streamsrv.{__version__}",
            "platform": "linux/amd64",
        }
    )


# OpenAPI (v2 for kubectl 1.27/1.28, v3 for 1.29+): streamsrv/openapi.py.


# ------------------------------------------------------------------------------- pods


def pod_fields(pod: dict[str, Any]) -> dict[str, str]:
    """The field selectors the apiserver takes for pods."""
    meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    return {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.restartPolicy": spec.get("restartPolicy", ""),
        "spec.schedulerName": spec.get("schedulerName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "spec.hostNetwork": str(bool(spec.get("hostNetwork"))).lower(),
        "status.phase": status.get("phase", ""),
        "status.podIP": status.get("podIP", ""),
        "status.nominatedNodeName": status.get("nominatedNodeName", ""),
    }


def field_terms(request: web.Request, known: Collection[str]) -> FieldTerms:
    """The request's ``fieldSelector``; the apiserver's 400 for a field not in ``known``."""
    try:
        return parse_field_selector(request.query.get("fieldSelector", ""), known)
    except UnsupportedField as exc:
        raise StatusError(400, str(exc)) from exc


def _age(since: str | None) -> str:
    if not since:
        return "<unknown>"
    seconds = int(
        (
            datetime.now(UTC) - datetime.strptime(since, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        ).total_seconds()
    )
    seconds = max(seconds, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _wants_table(request: web.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "")


def _since(when: str | None) -> datetime | None:
    if not when:
        return None
    try:
        return datetime.strptime(when[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def pod_status_cells(obj: dict[str, Any]) -> tuple[str, str, str]:
    """READY, STATUS and RESTARTS as the apiserver's pod printer makes them: the reason of a
    waiting or ended container over the phase, restarts with the time of the last one."""
    status = obj.get("status", {})
    reason = status.get("reason") or status.get("phase", "")
    restarts, ready, running = 0, 0, False
    last: datetime | None = None
    for c in reversed(status.get("containerStatuses", [])):
        restarts += int(c.get("restartCount", 0))
        finished = _since(c.get("lastState", {}).get("terminated", {}).get("finishedAt"))
        if finished and (last is None or finished > last):
            last = finished
        state = c.get("state", {})
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif state.get("terminated", {}).get("reason"):
            reason = state["terminated"]["reason"]
        elif "terminated" in state:
            code = state["terminated"].get("exitCode", 0)
            reason = f"ExitCode:{code}"
        elif c.get("ready") and "running" in state:
            running = True
            ready += 1
    if reason == "Completed" and running:
        ready_cond = any(
            x.get("type") == "Ready" and x.get("status") == "True"
            for x in status.get("conditions", [])
        )
        reason = "Running" if ready_cond else "NotReady"
    if obj.get("metadata", {}).get("deletionTimestamp"):
        reason = "Terminating"
    total = len(obj.get("spec", {}).get("containers", []))
    shown = str(restarts)
    if last is not None and restarts:
        shown = f"{restarts} ({_age(last.strftime('%Y-%m-%dT%H:%M:%SZ'))} ago)"
    return f"{ready}/{total}", reason, shown


def _table(objs: list[dict[str, Any]], resource_version: str = "") -> dict[str, Any]:
    columns = [
        ("Name", "string", "name", 0),
        ("Ready", "string", "", 0),
        ("Status", "string", "", 0),
        ("Restarts", "string", "", 0),
        ("Age", "string", "", 0),
        ("IP", "string", "", 1),
        ("Node", "string", "", 1),
    ]
    rows = []
    for obj in objs:
        ready, reason, restarts = pod_status_cells(obj)
        rows.append(
            {
                "cells": [
                    obj["metadata"]["name"],
                    ready,
                    reason,
                    restarts,
                    _age(obj["metadata"].get("creationTimestamp")),
                    obj["status"].get("podIP", "<none>"),
                    obj["spec"].get("nodeName", "<none>"),
                ],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj["metadata"],
                },
            }
        )
    return table(columns, rows, resource_version)


def table(
    columns: list[tuple[str, str, str, int]], rows: list[dict[str, Any]], resource_version: str = ""
) -> dict[str, Any]:
    """A ``meta.k8s.io/v1`` Table: columns as (name, type, format, priority)."""
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [
            {"name": n, "type": t, "format": f, "description": n, "priority": p}
            for n, t, f, p in columns
        ],
        "rows": rows,
    }


def _label_terms(request: web.Request) -> str:
    return request.query.get("labelSelector", "")


async def _watch(
    request: web.Request,
    kind: str,
    match: Callable[[Change], bool],
    current: list[dict[str, Any]],
    render: Callable[[dict[str, Any]], dict[str, Any]],
) -> web.StreamResponse:
    try:
        return await serve_watch(request, request.app[HUB], kind, match, current, render)
    except BadWatch as exc:
        raise StatusError(400, str(exc)) from exc
    except TooManyWatchers as exc:
        raise StatusError(429, str(exc), headers={"Retry-After": "1"}) from exc


async def list_pods(request: web.Request) -> web.StreamResponse:
    namespace = request.match_info.get("namespace")
    fields = field_terms(request, _POD_FIELDS)
    labels = _label_terms(request)
    name = next((v for k, v, neg in fields if k == "metadata.name" and not neg), None)
    controller = request.app[CONTROLLER]
    found = await controller.sync(namespace, name)
    pods = [controller.render(p) for p in found]

    def matches(obj: dict[str, Any]) -> bool:
        return fields_match(pod_fields(obj), fields) and matches_labels(
            obj["metadata"].get("labels", {}), labels
        )

    pods = [p for p in pods if matches(p)]
    if query_bool(request, "watch"):
        as_table = _wants_table(request)

        def match(change: Change) -> bool:
            return (namespace is None or change.namespace == namespace) and matches(change.obj)

        def render(obj: dict[str, Any]) -> dict[str, Any]:
            if not as_table:
                return obj
            return _table([obj], obj["metadata"].get("resourceVersion", ""))

        return await _watch(request, "Pod", match, pods, render)
    rv = str(request.app[HUB].rv)
    if _wants_table(request):
        return _json(_table(pods, rv))
    return _json(
        {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": pods}
    )


_POD_FIELDS = frozenset(pod_fields({"metadata": {}}))


async def _get_pod(request: web.Request) -> Pod:
    ns, name = request.match_info["namespace"], request.match_info["name"]
    found = await request.app[CONTROLLER].sync(ns, name)
    if not found:
        raise not_found(name)
    return found[0]


async def get_pod(request: web.Request) -> web.Response:
    obj = request.app[CONTROLLER].render(await _get_pod(request))
    return _json(_table([obj]) if _wants_table(request) else obj)


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors' aliases: a 1 KB document of nested aliases ("billion laughs")
    expands to gigabytes once built. A pod manifest never needs them; they are refused before
    anything is built (the Python loader, so that this override is the one that runs)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not accepted", event.start_mark
            )
        return super().compose_node(parent, index)


YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
JSON_TYPES = ("application/json", "application/octet-stream", "")
# kubectl 1.32+ (client-go's typed clients) send the pods they create as protobuf.
PROTOBUF_TYPES = (k8sproto.CONTENT_TYPE,)
MANIFEST_TYPES = YAML_TYPES + JSON_TYPES + PROTOBUF_TYPES
# Manifests are decoded in threads, a few at a time: a 1 MiB body costs up to a second of CPU
# in the pure-Python YAML loader, which must not stall every session on the event loop.
DECODING = web.AppKey("decoding", asyncio.Semaphore)
DECODERS = 2


def decode_manifest(raw: bytes, ctype: str) -> Any:
    """The manifest in ``raw`` (JSON, alias-free YAML, or a protobuf v1 Pod as its JSON form:
    docs/architecture.md, "Protobuf request bodies"); ValueError if it cannot be decoded."""
    try:
        if ctype in PROTOBUF_TYPES:
            return k8sproto.decode(raw)  # k8sproto.ProtobufError is a ValueError
        if ctype in YAML_TYPES:
            return yaml.load(raw, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader)
        return json.loads(raw)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc)) from exc
    except RecursionError as exc:
        raise ValueError("the document is nested too deeply") from exc


def _invalid(exc: InvalidPod) -> StatusError:
    """The apiserver's 422 for an invalid pod, a cause for each field."""
    return StatusError(
        422,
        str(exc),
        details={
            "name": exc.name,
            "kind": "Pod",
            "causes": [
                {"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in exc.causes
            ],
        },
    )


async def create_pod(request: web.Request) -> web.Response:
    namespace = request.match_info["namespace"]
    raw = await request.read()  # at most Limits.max_request_body (413 past it)
    ctype = request.content_type
    if ctype not in MANIFEST_TYPES:
        raise StatusError(415, f'the body of the request was in an unknown format: "{ctype}"')
    try:
        async with request.app[DECODING]:
            manifest = await asyncio.to_thread(decode_manifest, raw, ctype)
    except ValueError as exc:
        raise StatusError(400, f"the body of the request could not be decoded: {exc}") from exc
    refused, warnings = field_validation(manifest, request.query.get("fieldValidation"))
    if refused:
        raise StatusError(400, refused)
    try:
        spec = parse_pod(manifest, namespace=namespace)
    except InvalidPod as exc:
        raise _invalid(exc) from exc
    try:
        pod = await request.app[MANAGER].create(spec)
    except InvalidPod as exc:  # what only the runtime can tell (a hostPath type check)
        raise _invalid(exc) from exc
    except PodExists as exc:
        raise StatusError(409, str(exc), details={"name": spec.name, "kind": "pods"}) from exc
    except ImageNotFound as exc:
        raise StatusError(
            422,
            f'Pod "{spec.name}" is invalid: {exc}',
            details={"name": spec.name, "kind": "Pod"},
        ) from exc
    except EngineUnavailable:
        raise
    except BackendError as exc:
        log.warning("creating pod %s/%s failed: %s", namespace, spec.name, exc)
        raise StatusError(500, f'creating pod "{spec.name}" failed: {exc}') from exc
    log.info("created pod %s/%s (uid %s)", namespace, spec.name, spec.uid)
    controller = request.app[CONTROLLER]
    controller.kick()
    found = await controller.sync(namespace, spec.name)
    resp = _json(controller.render(found[0] if found else pod), 201)
    for warning in warnings:  # RFC 7234 warn-code 299, as the apiserver sends them
        resp.headers.add("Warning", "299 - " + json.dumps(warning))
    return resp


async def delete_pod(request: web.Request) -> web.Response:
    ns, name = request.match_info["namespace"], request.match_info["name"]
    grace: float | None = None
    if "gracePeriodSeconds" in request.query:
        try:
            grace = float(request.query["gracePeriodSeconds"])
        except ValueError as exc:
            raise StatusError(400, "gracePeriodSeconds must be a number") from exc
    if request.can_read_body:
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError:
            body = {}
        if isinstance(body, dict) and isinstance(body.get("gracePeriodSeconds"), int):
            grace = float(body["gracePeriodSeconds"])
    try:
        pod = await request.app[MANAGER].delete(ns, name, grace)
    except EngineUnavailable:
        raise
    except BackendError as exc:
        raise StatusError(500, f'deleting pod "{name}" failed: {exc}') from exc
    if pod is None:
        raise not_found(name)
    log.info("deleted pod %s/%s", ns, name)
    controller = request.app[CONTROLLER]
    obj = controller.render(pod)
    await controller.sync(ns, name)
    return _json(obj)


# ------------------------------------------------------------------------------- updates


async def _update(request: web.Request, pod: Pod, old: dict[str, Any], new: Any) -> web.Response:
    """Keep what may change of ``new`` (labels, annotations) after the apiserver's checks."""
    name = pod.spec.name
    if not isinstance(new, dict):
        raise StatusError(400, "the object must be a JSON object")
    given = (new.get("metadata") or {}).get("resourceVersion")
    if given and given != old["metadata"].get("resourceVersion"):
        raise StatusError(
            409,
            f'Operation cannot be fulfilled on pods "{name}": the object has been modified; '
            "please apply your changes to the latest version and try again",
            reason="Conflict",
            details={"name": name, "kind": "pods"},
        )
    causes = patching.pod_update_causes(old, new)
    if causes:
        raise StatusError(
            422,
            f'Pod "{name}" is invalid: ' + "; ".join(f"{f}: {m}" for f, m in causes),
            details={
                "name": name,
                "kind": "Pod",
                "causes": [
                    {"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes
                ],
            },
        )
    labels, annotations = patching.patched_metadata(new)
    controller = request.app[CONTROLLER]
    if request.query.get("dryRun") == "All":
        meta = {**old["metadata"], "labels": labels, "annotations": annotations}
        return _json({**old, "metadata": {k: v for k, v in meta.items() if v != {}}})
    await request.app[MANAGER].set_metadata(pod, {"labels": labels, "annotations": annotations})
    found = await controller.sync(pod.spec.namespace, name)
    if not found:
        raise not_found(name)
    log.info("updated the metadata of pod %s/%s", pod.spec.namespace, name)
    return _json(controller.render(found[0]))


async def patch_pod(request: web.Request) -> web.Response:
    pod = await _get_pod(request)
    old = request.app[CONTROLLER].render(pod)
    body = await request.read()  # at most Limits.max_request_body (413 past it)
    try:
        async with request.app[DECODING]:  # a 3 MiB patch is up to a second of CPU
            new = await asyncio.to_thread(patching.apply_patch, old, body, request.content_type)
    except patching.UnsupportedPatch as exc:
        raise StatusError(415, str(exc)) from exc
    except patching.InvalidPatch as exc:
        raise StatusError(exc.status, str(exc)) from exc
    return await _update(request, pod, old, new)


async def replace_pod(request: web.Request) -> web.Response:
    pod = await _get_pod(request)
    old = request.app[CONTROLLER].render(pod)
    raw = await request.read()
    ctype = request.content_type
    if ctype not in MANIFEST_TYPES:
        raise StatusError(415, f'the body of the request was in an unknown format: "{ctype}"')
    try:
        async with request.app[DECODING]:
            new = await asyncio.to_thread(decode_manifest, raw, ctype)
    except ValueError as exc:
        raise StatusError(400, f"the body of the request could not be decoded: {exc}") from exc
    return await _update(request, pod, old, new)


# ------------------------------------------------------------------------------- logs


#: How often a follow at the end of the file asks whether its container still runs.
LOG_POLL = 0.5


async def pod_log(request: web.Request) -> web.StreamResponse:
    """``kubectl logs``: the container's CRI log file, read as the kubelet reads it."""
    pod = await _get_pod(request)
    spec = pod.spec
    try:
        opts = LogOptions.from_query(request.query, name=spec.name)
    except InvalidLogOptions as exc:
        raise StatusError(exc.code, str(exc), reason=exc.reason, details=exc.details()) from exc
    chosen = named_container(request, pod)
    current = pod.container(chosen.name)
    if current is None:
        raise StatusError(
            400,
            f'container "{chosen.name}" in pod "{spec.name}" is waiting to start: '
            "ContainerCreating",
        )
    instance = current
    if opts.previous:
        before = pod.previous.get(chosen.name)
        if before is None:
            raise StatusError(
                400,
                f'previous terminated container "{chosen.name}" in pod "{spec.name}" not found',
            )
        instance = before
    manager = request.app[MANAGER]
    path = manager.log_path(spec, chosen.name, instance.attempt)
    where = str(path) if path is not None else instance.log_path
    if not where or not await asyncio.to_thread(os.path.exists, where):
        raise StatusError(
            404,
            f'no log file for container "{chosen.name}" (instance {instance.attempt}) of pod '
            f'"{spec.name}": it was started without one (made before streamsrv kept logs, or '
            "by another client of its runtime)",
            details={"name": spec.name, "kind": "pods"},
        )
    controller = request.app[CONTROLLER]

    async def running() -> bool:
        return controller.still_running(spec.namespace, spec.name, instance.id)

    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    # A file removed with its pod while read: what was sent is all there is.
    with contextlib.suppress(FileNotFoundError):
        await read_log(where, opts, resp.write, running=running, poll=LOG_POLL)
    await resp.write_eof()
    return resp


# ------------------------------------------------------------------------------- events

_EVENT_COLUMNS = [
    ("Last Seen", "string", "", 0),
    ("Type", "string", "", 0),
    ("Reason", "string", "", 0),
    ("Object", "string", "", 0),
    ("Subobject", "string", "", 1),
    ("Source", "string", "", 1),
    ("Message", "string", "", 0),
    ("First Seen", "string", "", 1),
    ("Count", "string", "", 1),
    ("Name", "string", "name", 1),
]
_EVENT_FIELDS = frozenset(event_fields({}))


def _event_table(events: list[dict[str, Any]], rv: str = "") -> dict[str, Any]:
    rows = []
    for e in events:
        inv = e.get("involvedObject", {})
        source = e.get("source", {})
        rows.append(
            {
                "cells": [
                    _age(e.get("lastTimestamp")),
                    e.get("type", ""),
                    e.get("reason", ""),
                    f"{inv.get('kind', '').lower()}/{inv.get('name', '')}",
                    inv.get("fieldPath", ""),
                    ", ".join(v for v in (source.get("component"), source.get("host")) if v),
                    e.get("message", ""),
                    _age(e.get("firstTimestamp")),
                    str(e.get("count", 1)),
                    e["metadata"]["name"],
                ],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": e["metadata"],
                },
            }
        )
    return table(_EVENT_COLUMNS, rows, rv)


async def list_events(request: web.Request) -> web.StreamResponse:
    namespace = request.match_info.get("namespace")
    fields = field_terms(request, _EVENT_FIELDS)
    labels = _label_terms(request)

    def matches(e: dict[str, Any]) -> bool:
        return fields_match(event_fields(e), fields) and matches_labels(
            e["metadata"].get("labels", {}), labels
        )

    events = [e for e in request.app[EVENTS].list(namespace) if matches(e)]
    if query_bool(request, "watch"):
        as_table = _wants_table(request)

        def match(change: Change) -> bool:
            return (namespace is None or change.namespace == namespace) and matches(change.obj)

        def render(obj: dict[str, Any]) -> dict[str, Any]:
            return _event_table([obj], obj["metadata"]["resourceVersion"]) if as_table else obj

        return await _watch(request, "Event", match, events, render)
    rv = str(request.app[HUB].rv)
    if _wants_table(request):
        return _json(_event_table(events, rv))
    return _json(
        {
            "kind": "EventList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": rv},
            "items": events,
        }
    )


async def get_event(request: web.Request) -> web.Response:
    ns, name = request.match_info["namespace"], request.match_info["name"]
    event = request.app[EVENTS].get(ns, name)
    if event is None:
        raise StatusError(
            404, f'events "{name}" not found', details={"name": name, "kind": "events"}
        )
    return _json(_event_table([event]) if _wants_table(request) else event)


# ------------------------------------------------------------------------------- streaming


def query_bool(request: web.Request, name: str) -> bool:
    """The apiserver's rule: absent, ``0`` or ``false`` (any case) is false, all else true."""
    value = request.query.get(name)
    return value is not None and value.strip().lower() not in ("0", "false")


def query_streams(request: web.Request) -> dict[str, bool]:
    """Which of stdin, stdout, stderr and tty an exec or attach request asks for."""
    return {name: query_bool(request, name) for name in ("stdin", "stdout", "stderr", "tty")}


def named_container(request: web.Request, pod: Pod, name: str | None = None) -> ContainerSpec:
    """The container named by ``container`` (or ``name``), else the annotated default, else the
    only one; the apiserver's 400 otherwise."""
    spec = pod.spec
    name = request.query.get("container", "") if name is None else name
    names = " ".join(c.name for c in spec.containers)
    if name:
        chosen = spec.container(name)
        if chosen is None:
            raise StatusError(400, f"container {name} is not valid for pod {spec.name}")
        return chosen
    if len(spec.containers) == 1 or spec.annotations.get(DEFAULT_CONTAINER_ANNOTATION):
        return spec.default_container()
    raise StatusError(
        400, f"a container name must be specified for pod {spec.name}, choose one of: [{names}]"
    )


def pick_container(
    request: web.Request, pod: Pod, name: str | None = None
) -> tuple[ContainerSpec, str]:
    """:func:`named_container` and the id of its current instance (400 until it is made)."""
    chosen = named_container(request, pod, name)
    cid = pod.container_id(chosen.name)
    if cid is None:
        raise StatusError(
            400, f"container {chosen.name} in pod {pod.spec.name} has not been created"
        )
    return chosen, cid


async def issue_url(
    request: web.Request, req: AnyRequest, *, purpose: str = "default"
) -> tuple[Kind, str]:
    """A one-time URL for ``req``, with the gateway's answers to a refused request."""
    streams = request.app[STREAMS]
    try:
        return kind_of(req), streams.issue(req, purpose=purpose)
    except InvalidRequest as exc:
        raise StatusError(400, str(exc)) from exc
    except CacheFull as exc:
        raise StatusError(429, str(exc), headers={"Retry-After": str(exc.retry_after)}) from exc


async def _stream(request: web.Request, req: AnyRequest) -> web.StreamResponse:
    """The session on this connection: authenticated by the bearer token already, so no
    one-time token is issued and no cache slot is held (kubectl never sees a 429 here).

    With a remote runtime (``serve --cri-endpoint``) the stream server relays it to the node
    (:func:`proxied`)."""
    try:
        return await request.app[STREAMS].serve_request(request, req)
    except InvalidRequest as exc:
        raise StatusError(400, str(exc)) from exc


#: The one WebSocket protocol the gateway offers a node for a session whose stdin can end
#: (stdin without a tty), when the client offers it: v5 carries the end of stdin, v4 cannot,
#: and a v4 session would wait for it forever. A node that has no v5 (containerd 1.6's stream
#: server) refuses the upgrade and kubectl falls back to SPDY, as it does behind an apiserver
#: that does not translate (docs/cri.md). Other sessions lose nothing on v4: the client's own
#: offer goes to the node as it is.
NODE_WEBSOCKET_PROTOCOL = "v5.channel.k8s.io"


def _offer(request: web.Request, req: AnyRequest) -> dict[str, list[str]]:
    if not is_websocket(request) or isinstance(req, PortForwardRequest):
        return {}
    if not req.stdin or req.tty:
        return {}
    offered = [
        p.strip()
        for header in request.headers.getall("Sec-WebSocket-Protocol", [])
        for p in header.split(",")
        if p.strip()
    ]
    if NODE_WEBSOCKET_PROTOCOL in offered:
        return {"Sec-WebSocket-Protocol": [NODE_WEBSOCKET_PROTOCOL]}
    return {}


async def proxied(
    streams: StreamServer, runtime: RemoteStreams, request: web.Request, req: AnyRequest
) -> web.StreamResponse:
    """A session on a node (``serve --cri-endpoint``): its CRI Exec/Attach/PortForward gives a
    one-time URL, and the client's connection is spliced to it, as the kubelet and apiserver
    do (docs/cri.md). kubectl's sessions and the browser page's come here alike."""
    url = await runtime.stream_url(req)
    ctx = streams.context
    with ctx.session(req, client=peer(request)) as account:
        transport = "websocket" if is_websocket(request) else "spdy"
        # Counted while it runs; recorded at the node, which sees the streams (the splice
        # carries their frames): the audit line here has the bytes on the wire.
        stats = ProxyStats(
            upgraded=lambda: ctx.established(account, transport, "relayed", record=False)
        )
        resp = await proxy_upgrade(
            request,
            url,
            ssl=runtime.stream_ssl,
            limits=streams.limits,
            stopping=ctx.stopping,
            stats=stats,
            offer=_offer(request, req),
        )
        account.bytes_in, account.bytes_out = stats.bytes_up, stats.bytes_down
        account.error = stats.error
    if stats.error:
        log.debug("proxied %s session: %s", kind_of(req), stats.error)
    return resp


async def live_pod(request: web.Request, doing: str) -> Pod:
    """The pod, unless it has completed (kubectl's own wording for the refusal)."""
    pod = await _get_pod(request)
    if pod.phase in ("Succeeded", "Failed"):
        raise StatusError(
            400, f"cannot {doing} a container in a completed pod; current phase is {pod.phase}"
        )
    return pod


def origin_of(request: web.Request, pod: Pod, container: str, via: str) -> Origin:
    """Who asks (the gateway's token, by its fingerprint) and for what: the audit record's."""
    return Origin(
        user=token_identity(request.app[TOKEN]),
        namespace=pod.spec.namespace,
        pod=pod.spec.name,
        container=container,
        via=via,
    )


# Each handler reads its pod in a function of its own and streams after it has returned: the
# pod (read afresh for the request, with every container's state and the parsed manifest,
# 4-5 KiB) is then not held for the whole session (docs/benchmarks.md, idle memory).


async def pod_exec(request: web.Request) -> web.StreamResponse:
    return await _stream(request, await _exec_request(request))


async def _exec_request(request: web.Request) -> AnyRequest:
    pod = await live_pod(request, "exec into")
    spec, cid = pick_container(request, pod)
    req = exec_request(cid, request.query.getall("command", []), **query_streams(request))
    return dataclasses.replace(req, origin=origin_of(request, pod, spec.name, "kubectl"))


async def pod_attach(request: web.Request) -> web.StreamResponse:
    return await _stream(request, await _attach_request(request))


async def _attach_request(request: web.Request) -> AnyRequest:
    pod = await live_pod(request, "attach")
    spec, cid = pick_container(request, pod)
    req = attach_request(spec, cid, **query_streams(request))
    return dataclasses.replace(req, origin=origin_of(request, pod, spec.name, "kubectl"))


async def pod_portforward(request: web.Request) -> web.StreamResponse:
    return await _stream(request, await _portforward_request(request))


async def _portforward_request(request: web.Request) -> AnyRequest:
    pod = await _get_pod(request)
    if pod.phase != "Running":
        raise StatusError(
            400, f"unable to forward port because pod is not running. Current status={pod.phase}"
        )
    try:
        ports = tuple(channels.parse_ports(request.query.getall("ports", [])))
    except ValueError:
        ports = ()  # only the channel protocol needs them; it answers 400 itself
    origin = origin_of(request, pod, "", "kubectl")
    return PortForwardRequest(pod.sandbox.id, ports, origin=origin)


async def metrics(request: web.Request) -> web.Response:
    """The Prometheus scrape (the text format, or OpenMetrics when the scraper asks for it);
    behind the bearer token like the kubelet's /metrics."""
    body, content_type = request.app[STREAMS].metrics.exposition(request.headers.get("Accept"))
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = content_type
    return resp


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def add_routes(
    app: web.Application, manager: PodManager, token: str, streams: StreamServer
) -> None:
    """Mount the gateway on ``app`` (which must use :func:`auth_and_errors`)."""
    app[MANAGER] = manager
    app[TOKEN] = token
    app[STREAMS] = streams
    app[DECODING] = asyncio.Semaphore(DECODERS)
    hub = Hub()
    if manager.events is None:
        manager.events = EventStore(hub)
    else:
        hub = manager.events.hub
    app[HUB] = hub
    app[EVENTS] = manager.events
    controller = PodController(manager, hub)
    app[CONTROLLER] = controller

    async def start_controller(_: web.Application) -> None:
        controller.start()

    async def stop_controller(_: web.Application) -> None:
        await controller.stop()

    app.on_startup.append(start_controller)
    app.on_shutdown.append(stop_controller)
    if isinstance(manager.runtime, RemoteStreams):
        streams.relay = functools.partial(proxied, streams, manager.runtime)
    streams.add_routes(app)
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/metrics", metrics)
    for sub, handler in (
        ("exec", pod_exec),
        ("attach", pod_attach),
        ("portforward", pod_portforward),
    ):
        path = f"/api/v1/namespaces/{{namespace}}/pods/{{name}}/{sub}"
        r.add_route("GET", path, handler)
        r.add_route("POST", path, handler)
    r.add_get("/version", version)
    r.add_get("/api", api_versions)
    r.add_get("/apis", api_groups)
    r.add_get("/api/v1", api_v1)
    r.add_get("/openapi/v2", openapi_v2)
    r.add_get("/openapi/v3", openapi_v3_root)
    r.add_get("/openapi/v3/api/v1", openapi_v3_core)
    add_cluster_routes(app, manager)  # nodes, namespaces, pods/ephemeralcontainers
    r.add_get("/api/v1/pods", list_pods)
    r.add_get("/api/v1/namespaces/{namespace}/pods", list_pods)
    r.add_post("/api/v1/namespaces/{namespace}/pods", create_pod)
    r.add_get("/api/v1/namespaces/{namespace}/pods/{name}", get_pod)
    r.add_patch("/api/v1/namespaces/{namespace}/pods/{name}", patch_pod)
    r.add_put("/api/v1/namespaces/{namespace}/pods/{name}", replace_pod)
    r.add_get("/api/v1/namespaces/{namespace}/pods/{name}/log", pod_log)
    r.add_get("/api/v1/events", list_events)
    r.add_get("/api/v1/namespaces/{namespace}/events", list_events)
    r.add_get("/api/v1/namespaces/{namespace}/events/{name}", get_event)
    r.add_delete("/api/v1/namespaces/{namespace}/pods/{name}", delete_pod)
