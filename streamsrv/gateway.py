"""An apiserver-compatible front for kubectl and the Python client: pods by name.

It serves the discovery documents kubectl reads (``/api``, ``/apis``, ``/api/v1``), pod list,
get, create and delete in Kubernetes JSON (and the ``Table`` form ``kubectl get`` asks for), and
every error as a ``metav1.Status``. Every ``/api`` route needs the bearer token written into
the kubeconfig; the gateway is the only place that knows pods by name.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import yaml
from aiohttp import web

from .podmanager import Pod, PodExists, PodManager, RemoteStreams
from .pods import DEFAULT_CONTAINER_ANNOTATION, ContainerSpec, InvalidPod, parse_pod
from .protocol import channels
from .protocol.status import kube_status
from .proxy import ProxyStats, proxy_upgrade
from .requests import (
    AnyRequest,
    InvalidRequest,
    Kind,
    PortForwardRequest,
    attach_request,
    exec_request,
    kind_of,
)
from .runtime.base import BackendError, EngineUnavailable, ImageNotFound
from .server import StreamServer
from .tokens import CacheFull
from .transport import is_websocket

log = logging.getLogger(__name__)

MANAGER = web.AppKey("manager", PodManager)
TOKEN = web.AppKey("token", str)
STREAMS = web.AppKey("streams", StreamServer)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "AlreadyExists",
    429: "TooManyRequests",
    415: "UnsupportedMediaType",
    422: "Invalid",
    500: "InternalError",
    503: "ServiceUnavailable",
}
#: Routes that answer without the bearer token: they reveal nothing (the stream server's own
#: one-time URLs carry their token in the path; the browser page is static).
PUBLIC = ("/healthz",)
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

POD_RESOURCES: list[dict[str, Any]] = [
    {
        "name": "pods",
        "singularName": "pod",
        "namespaced": True,
        "kind": "Pod",
        "verbs": ["create", "delete", "get", "list"],
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
        "name": "pods/exec",
        "singularName": "",
        "namespaced": True,
        "kind": "PodExecOptions",
        "verbs": ["create", "get"],
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


# OpenAPI v3, only as much as kubectl reads: before `create`/`apply` its query-parameter
# verifier looks for an operation on Pod (x-kubernetes-group-version-kind) that takes the
# `fieldValidation` query parameter; finding it, kubectl leaves validation to the server
# (which parse_pod does) instead of downloading a full schema to validate on its side.
_POD_GVK = {"group": "", "version": "v1", "kind": "Pod"}
_FIELD_VALIDATION = {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}
OPENAPI_V1: dict[str, Any] = {
    "openapi": "3.0.0",
    "info": {"title": "streamsrv", "version": "v1"},
    "paths": {
        "/api/v1/namespaces/{namespace}/pods": {
            "post": {
                "operationId": "createCoreV1NamespacedPod",
                "parameters": [_FIELD_VALIDATION],
                "x-kubernetes-action": "post",
                "x-kubernetes-group-version-kind": _POD_GVK,
            },
        },
        "/api/v1/namespaces/{namespace}/pods/{name}": {
            # kubectl's verifier inspects the PATCH operation; streamsrv answers PATCH with 405.
            "patch": {
                "operationId": "patchCoreV1NamespacedPod",
                "parameters": [_FIELD_VALIDATION],
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": _POD_GVK,
            },
        },
    },
}


async def openapi_v3_root(request: web.Request) -> web.Response:
    return _json({"paths": {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1"}}})


async def openapi_v3_core(request: web.Request) -> web.Response:
    return _json(OPENAPI_V1)


# ------------------------------------------------------------------------------- pods


def _matches_fields(pod: dict[str, Any], selector: str) -> bool:
    """``fieldSelector`` on the fields kubectl uses (metadata.name, .namespace, status.phase)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        negate = "!=" in term
        key, _, value = term.partition("!=" if negate else "==" if "==" in term else "=")
        section, _, attr = key.strip().partition(".")
        actual = pod.get(section, {}).get(attr)
        if actual is None:
            raise StatusError(400, f'field label not supported: "{key.strip()}"')
        if (actual == value.strip()) == negate:
            return False
    return True


def _matches_labels(labels: dict[str, str], selector: str) -> bool:
    """``labelSelector`` equality forms: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, _, v = term.partition("!=")
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, _, v = term.replace("==", "=").partition("=")
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


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


def _table(objs: list[dict[str, Any]]) -> dict[str, Any]:
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
        statuses = obj["status"].get("containerStatuses", [])
        ready = sum(1 for s in statuses if s.get("ready"))
        rows.append(
            {
                "cells": [
                    obj["metadata"]["name"],
                    f"{ready}/{len(obj['spec'].get('containers', []))}",
                    obj["status"]["phase"],
                    "0",
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
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": ""},
        "columnDefinitions": [
            {"name": n, "type": t, "format": f, "description": n, "priority": p}
            for n, t, f, p in columns
        ],
        "rows": rows,
    }


async def list_pods(request: web.Request) -> web.Response:
    if request.query.get("watch") in ("true", "1"):
        raise StatusError(405, "watch is not supported by streamsrv")
    namespace = request.match_info.get("namespace")
    pods = [p.render() for p in await request.app[MANAGER].list(namespace)]
    fields = request.query.get("fieldSelector", "")
    labels = request.query.get("labelSelector", "")
    pods = [
        p
        for p in pods
        if _matches_fields(p, fields) and _matches_labels(p["metadata"].get("labels", {}), labels)
    ]
    if _wants_table(request):
        return _json(_table(pods))
    return _json(
        {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": ""}, "items": pods}
    )


async def _get_pod(request: web.Request) -> Pod:
    ns, name = request.match_info["namespace"], request.match_info["name"]
    pod = await request.app[MANAGER].get(ns, name)
    if pod is None:
        raise not_found(name)
    return pod


async def get_pod(request: web.Request) -> web.Response:
    obj = (await _get_pod(request)).render()
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
# Manifests are decoded in threads, a few at a time: a 1 MiB body costs up to a second of CPU
# in the pure-Python YAML loader, which must not stall every session on the event loop.
DECODING = web.AppKey("decoding", asyncio.Semaphore)
DECODERS = 2


def decode_manifest(raw: bytes, ctype: str) -> Any:
    """The manifest in ``raw`` (JSON or alias-free YAML); ValueError if it cannot be decoded."""
    try:
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
    if ctype not in YAML_TYPES + JSON_TYPES:
        raise StatusError(415, f'the body of the request was in an unknown format: "{ctype}"')
    try:
        async with request.app[DECODING]:
            manifest = await asyncio.to_thread(decode_manifest, raw, ctype)
    except ValueError as exc:
        raise StatusError(400, f"the body of the request could not be decoded: {exc}") from exc
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
    return _json(pod.render(), 201)


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
    return _json(pod.render())


# ------------------------------------------------------------------------------- streaming


def query_bool(request: web.Request, name: str) -> bool:
    """The apiserver's rule: absent, ``0`` or ``false`` (any case) is false, all else true."""
    value = request.query.get(name)
    return value is not None and value.strip().lower() not in ("0", "false")


def query_streams(request: web.Request) -> dict[str, bool]:
    """Which of stdin, stdout, stderr and tty an exec or attach request asks for."""
    return {name: query_bool(request, name) for name in ("stdin", "stdout", "stderr", "tty")}


def pick_container(
    request: web.Request, pod: Pod, name: str | None = None
) -> tuple[ContainerSpec, str]:
    """The container named by ``container`` (or ``name``), else the annotated default, else the
    only one."""
    spec = pod.spec
    name = request.query.get("container", "") if name is None else name
    if name:
        chosen = spec.container(name)
        if chosen is None:
            raise StatusError(400, f"container {name} is not valid for pod {spec.name}")
    elif len(spec.containers) == 1 or spec.annotations.get(DEFAULT_CONTAINER_ANNOTATION):
        chosen = spec.default_container()
    else:
        names = " ".join(c.name for c in spec.containers)
        raise StatusError(
            400,
            f"a container name must be specified for pod {spec.name}, choose one of: [{names}]",
        )
    cid = pod.container_id(chosen.name)
    if cid is None:
        raise StatusError(400, f"container {chosen.name} in pod {spec.name} has not been created")
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
    stats = ProxyStats()
    with streams.context.session():
        resp = await proxy_upgrade(
            request,
            url,
            ssl=runtime.stream_ssl,
            limits=streams.limits,
            stopping=streams.context.stopping,
            stats=stats,
            offer=_offer(request, req),
        )
    if stats.answered == 101:
        transport = "websocket" if is_websocket(request) else "spdy"
        streams.metrics.sessions[(kind_of(req), transport)] += 1
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


async def pod_exec(request: web.Request) -> web.StreamResponse:
    pod = await live_pod(request, "exec into")
    _, cid = pick_container(request, pod)
    req = exec_request(cid, request.query.getall("command", []), **query_streams(request))
    return await _stream(request, req)


async def pod_attach(request: web.Request) -> web.StreamResponse:
    pod = await live_pod(request, "attach")
    spec, cid = pick_container(request, pod)
    return await _stream(request, attach_request(spec, cid, **query_streams(request)))


async def pod_portforward(request: web.Request) -> web.StreamResponse:
    pod = await _get_pod(request)
    if pod.phase != "Running":
        raise StatusError(
            400, f"unable to forward port because pod is not running. Current status={pod.phase}"
        )
    try:
        ports = tuple(channels.parse_ports(request.query.getall("ports", [])))
    except ValueError:
        ports = ()  # only the channel protocol needs them; it answers 400 itself
    return await _stream(request, PortForwardRequest(pod.sandbox.id, ports))


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=request.app[STREAMS].metrics.render(), content_type="text/plain")


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
    r.add_get("/openapi/v3", openapi_v3_root)
    r.add_get("/openapi/v3/api/v1", openapi_v3_core)
    r.add_get("/api/v1/pods", list_pods)
    r.add_get("/api/v1/namespaces/{namespace}/pods", list_pods)
    r.add_post("/api/v1/namespaces/{namespace}/pods", create_pod)
    r.add_get("/api/v1/namespaces/{namespace}/pods/{name}", get_pod)
    r.add_delete("/api/v1/namespaces/{namespace}/pods/{name}", delete_pod)
