"""Nodes and namespaces, read-only, as an apiserver shows them; and ephemeral containers' refusal.

- **Nodes.** A local runtime (Docker, the process runtime) is one node, ``streamsrv``: this
  host. Fronting CRI endpoints (``serve --cri-endpoint``), each endpoint is a node under the
  name the pods show in ``spec.nodeName`` (``SandboxState.node``). Capacity is this machine's
  (CPUs, ``MemTotal`` of ``/proc/meminfo``, the size of the file system of the state directory,
  110 pods); ``nodeInfo`` names the container runtime as the kubelet does
  (``docker://24.0.7``, ``containerd://1.6.20``, ``process://streamsrv``).
- **Node leases.** ``kube-node-lease/leases/NODE`` for each node: held by the node, renewed
  now, 40 s (``kubectl describe node`` reads it).
- **Namespaces.** The four an apiserver always has, plus every namespace a pod is in; all
  ``Active``. Creating a pod needs no namespace object, so none can be created or deleted.
- **Ephemeral containers** (``kubectl debug`` without ``--copy-to``): no runtime of streamsrv
  can add a container to a running pod, so ``pods/ephemeralcontainers`` answers the
  apiserver's 404 for a missing subresource, which kubectl words as "ephemeral containers are
  disabled for this cluster", with a message that says what to do instead.

The runtime is asked for its version without widening the ``Runtime`` protocol: a runtime with
``async version()`` (Docker) is ``NAME://VERSION``, one with CRI nodes (``nodes``, each with
``node`` and ``async identify()``) is one node per endpoint, any other ``NAME://streamsrv``
(docs/architecture.md, "Nodes and namespaces"). The objects are built by pure functions
(``render_node``, ``render_namespace``, the tables); the handlers only gather their inputs.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from aiohttp import web

from . import __version__
from .errors import BackendError
from .podmanager import PodManager
from .protocol.status import kube_status
from .selectors import UnsupportedField, fields_match, matches_labels, parse_field_selector

#: The node of a local runtime, and of every pod whose sandbox names none (pods.render_pod).
LOCAL_NODE = "streamsrv"
#: Namespaces every apiserver has.
BUILTIN_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")
#: The kubelet's default ``--max-pods``.
MAX_PODS = "110"
#: Where each node's heartbeat Lease lives, and the kubelet's ``nodeLeaseDurationSeconds``.
NODE_LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_SECONDS = 40
#: Where the node's ephemeral storage is measured (optional; else ``STREAMSRV_STATE_DIR`` or
#: its default, as ``streamsrv serve`` picks it).
STATE_DIR = web.AppKey("cluster_state_dir", Path)

#: ``platform.machine()`` as Go's ``GOARCH`` (the ``kubernetes.io/arch`` label's values).
_GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def kubelet_version() -> str:
    """The node's ``kubeletVersion``: the gateway's ``/version`` ``gitVersion``."""
    return f"v1.33.0-streamsrv.{__version__}"


# ------------------------------------------------------------------------------- the machine


@dataclass(frozen=True, slots=True)
class Machine:
    """What a kubelet reports of its host (``status.capacity`` and ``status.nodeInfo``)."""

    cpus: int
    memory_ki: int
    storage_ki: int
    hostname: str
    kernel_version: str
    os_image: str
    operating_system: str
    architecture: str
    machine_id: str = ""
    system_uuid: str = ""
    boot_id: str = ""


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def memory_ki(meminfo: str) -> int:
    """``MemTotal`` of a ``/proc/meminfo`` text, in KiB (0 if absent)."""
    for line in meminfo.splitlines():
        key, _, rest = line.partition(":")
        if key.strip() == "MemTotal":
            number = rest.split()[0] if rest.split() else ""
            return int(number) if number.isdigit() else 0  # the kernel's "kB" are KiB
    return 0


def os_image(os_release: str) -> str:
    """``PRETTY_NAME`` of an ``/etc/os-release`` text, as the kubelet reports ``osImage``."""
    values: dict[str, str] = {}
    for line in os_release.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip("\"'")
    return values.get("PRETTY_NAME") or values.get("NAME") or "Linux"


def storage_ki(path: Path) -> int:
    """The size of the file system holding ``path`` (or its nearest existing parent), KiB."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError:
        return 0
    return st.f_blocks * st.f_frsize // 1024


def default_state_dir() -> Path:
    """``streamsrv serve``'s default state directory (its ``--state-dir`` unset)."""
    env = os.environ.get("STREAMSRV_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "streamsrv"


def read_machine(state_dir: Path) -> Machine:
    """This host, read from ``/proc``, ``/etc`` and ``/sys``; blocking (a worker thread)."""
    uname = os.uname()
    return Machine(
        cpus=os.cpu_count() or 1,
        memory_ki=memory_ki(_read("/proc/meminfo")),
        storage_ki=storage_ki(state_dir),
        hostname=socket.gethostname(),
        kernel_version=uname.release,
        os_image=os_image(_read("/etc/os-release") or _read("/usr/lib/os-release")),
        operating_system=uname.sysname.lower(),
        architecture=_GOARCH.get(platform.machine().lower(), platform.machine().lower()),
        machine_id=_read("/etc/machine-id"),
        system_uuid=_read("/sys/class/dmi/id/product_uuid"),
        boot_id=_read("/proc/sys/kernel/random/boot_id"),
    )


# ------------------------------------------------------------------------------- runtimes


@dataclass(frozen=True, slots=True)
class NodeRuntime:
    """One node as its container runtime describes it."""

    name: str
    #: ``status.nodeInfo.containerRuntimeVersion``: ``NAME://VERSION``.
    runtime_version: str
    #: Why the node is not Ready (its runtime does not answer); empty when it is.
    down: str = ""


@runtime_checkable
class VersionedRuntime(Protocol):
    """A local runtime that can name its engine's version (the Docker runtime)."""

    name: str

    async def version(self) -> str: ...


@runtime_checkable
class CriNode(Protocol):
    """One CRI endpoint of ``serve --cri-endpoint`` (``cri.remote.CriRuntime``)."""

    node: str

    async def identify(self) -> str:
        """``RUNTIME_NAME RUNTIME_VERSION``, from the endpoint's Version call."""
        ...


def _cri_version(identified: str) -> str:
    name, _, version = identified.strip().partition(" ")
    return f"{name or 'cri'}://{version.strip() or 'unknown'}"


async def _cri_node(node: CriNode) -> NodeRuntime:
    name = node.node or LOCAL_NODE
    try:
        return NodeRuntime(name, _cri_version(await node.identify()))
    except BackendError as exc:
        return NodeRuntime(name, "cri://unknown", down=str(exc))


async def runtime_nodes(runtime: object) -> list[NodeRuntime]:
    """The nodes ``runtime`` stands for, each with its runtime's name and version."""
    members = getattr(runtime, "nodes", None)
    if isinstance(members, list | tuple) and members:
        nodes = [m for m in members if isinstance(m, CriNode)]
        return list(await asyncio.gather(*(_cri_node(n) for n in nodes)))
    if isinstance(runtime, CriNode):
        return [await _cri_node(runtime)]
    name = str(getattr(runtime, "name", "") or "streamsrv")
    if isinstance(runtime, VersionedRuntime):
        try:
            return [NodeRuntime(LOCAL_NODE, f"{name}://{await runtime.version()}")]
        except BackendError as exc:
            return [NodeRuntime(LOCAL_NODE, f"{name}://unknown", down=str(exc))]
    return [NodeRuntime(LOCAL_NODE, f"{name}://streamsrv")]


# ------------------------------------------------------------------------------- objects


def _ts(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _uid(kind: str, name: str) -> str:
    """A uid that stays the same for the same object across restarts."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"streamsrv:{kind}/{name}"))


def _resource_version(when: datetime) -> str:
    return str(int(when.timestamp() * 1000))


def render_node(
    node: NodeRuntime,
    machine: Machine,
    *,
    created: datetime,
    now: datetime,
    kubelet: str | None = None,
) -> dict[str, Any]:
    """The ``v1 Node`` of ``node`` on ``machine``, as a kubelet registers and updates it."""
    capacity = {
        "cpu": str(machine.cpus),
        "ephemeral-storage": f"{machine.storage_ki}Ki",
        "memory": f"{machine.memory_ki}Ki",
        "pods": MAX_PODS,
    }
    started, beat = _ts(created), _ts(now)

    def condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
        return {
            "type": kind,
            "status": status,
            "lastHeartbeatTime": beat,
            "lastTransitionTime": started,
            "reason": reason,
            "message": message,
        }

    if node.down:
        ready = condition(
            "Ready", "False", "KubeletNotReady", f"container runtime is down: {node.down}"
        )
    else:
        ready = condition("Ready", "True", "KubeletReady", "kubelet is posting ready status")
    arch, system = machine.architecture, machine.operating_system
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "uid": _uid("nodes", node.name),
            "resourceVersion": _resource_version(now),
            "creationTimestamp": started,
            "labels": {
                "beta.kubernetes.io/arch": arch,
                "beta.kubernetes.io/os": system,
                "kubernetes.io/arch": arch,
                "kubernetes.io/hostname": node.name,
                "kubernetes.io/os": system,
            },
        },
        "spec": {},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "conditions": [
                condition(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                condition(
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                ),
                condition(
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                ),
                ready,
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": machine.hostname},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": machine.machine_id,
                "systemUUID": machine.system_uuid,
                "bootID": machine.boot_id,
                "kernelVersion": machine.kernel_version,
                "osImage": machine.os_image,
                "containerRuntimeVersion": node.runtime_version,
                "kubeletVersion": kubelet or kubelet_version(),
                "kubeProxyVersion": "",
                "operatingSystem": system,
                "architecture": arch,
            },
        },
    }


def render_lease(node: str, *, created: datetime, now: datetime) -> dict[str, Any]:
    """The ``coordination.k8s.io/v1 Lease`` a kubelet keeps renewing for ``node`` (``kubectl
    describe node`` shows it): held by the node, renewed ``now``."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": node,
            "namespace": NODE_LEASE_NAMESPACE,
            "uid": _uid("leases", node),
            "resourceVersion": _resource_version(now),
            "creationTimestamp": _ts(created),
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": node, "uid": _uid("nodes", node)}
            ],
        },
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            # MicroTime: RFC 3339 with microseconds.
            "renewTime": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        },
    }


def render_namespace(name: str, created: datetime) -> dict[str, Any]:
    """The ``v1 Namespace`` ``name``: Active, with the label every namespace gets."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "uid": _uid("namespaces", name),
            "resourceVersion": _resource_version(created),
            "creationTimestamp": _ts(created),
            "labels": {"kubernetes.io/metadata.name": name},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def namespaces(started: datetime, pods: Iterable[tuple[str, datetime]]) -> dict[str, datetime]:
    """Every namespace (name -> creation): the built-in ones, created when the server
    started, and each one a pod is in; a namespace is as old as its oldest pod at least."""
    found = dict.fromkeys(BUILTIN_NAMESPACES, started)
    for namespace, created in pods:
        found[namespace] = min(found.get(namespace, started), created)
    return dict(sorted(found.items()))


def age(since: str | None, now: datetime) -> str:
    """The AGE column: ``45s``, ``12m``, ``3h``, ``5d``."""
    if not since:
        return "<unknown>"
    then = datetime.strptime(since, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    seconds = max(int((now - then).total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def node_status(node: Mapping[str, Any]) -> str:
    """The STATUS column of ``kubectl get nodes``: Ready, NotReady or Unknown."""
    for c in node.get("status", {}).get("conditions", []):
        if c.get("type") == "Ready":
            text = {"True": "Ready", "False": "NotReady"}.get(c.get("status"), "Unknown")
            break
    else:
        text = "Unknown"
    if node.get("spec", {}).get("unschedulable"):
        text += ",SchedulingDisabled"
    return text


def node_roles(labels: Mapping[str, str]) -> str:
    """The ROLES column: ``node-role.kubernetes.io/ROLE`` and ``kubernetes.io/role`` labels."""
    roles = set()
    for key, value in labels.items():
        if key.startswith("node-role.kubernetes.io/"):
            roles.add(key.removeprefix("node-role.kubernetes.io/"))
        elif key == "kubernetes.io/role" and value:
            roles.add(value)
    return ",".join(sorted(r for r in roles if r)) or "<none>"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    priority: int = 0  # 1: shown with -o wide only
    format: str = ""
    description: str = field(default="", compare=False)


NODE_COLUMNS = (
    Column("Name", format="name"),
    Column("Status"),
    Column("Roles"),
    Column("Age"),
    Column("Version"),
    Column("Internal-IP", 1),
    Column("External-IP", 1),
    Column("OS-Image", 1),
    Column("Kernel-Version", 1),
    Column("Container-Runtime", 1),
)
NAMESPACE_COLUMNS = (Column("Name", format="name"), Column("Status"), Column("Age"))


def _address(node: Mapping[str, Any], kind: str) -> str:
    for a in node.get("status", {}).get("addresses", []):
        if a.get("type") == kind:
            return str(a.get("address", ""))
    return "<none>"


def node_cells(node: Mapping[str, Any], now: datetime) -> list[str]:
    meta, info = node["metadata"], node["status"]["nodeInfo"]
    return [
        meta["name"],
        node_status(node),
        node_roles(meta.get("labels", {})),
        age(meta.get("creationTimestamp"), now),
        info["kubeletVersion"],
        _address(node, "InternalIP"),
        _address(node, "ExternalIP"),
        info["osImage"],
        info["kernelVersion"],
        info["containerRuntimeVersion"],
    ]


def namespace_cells(ns: Mapping[str, Any], now: datetime) -> list[str]:
    meta = ns["metadata"]
    return [meta["name"], ns["status"]["phase"], age(meta.get("creationTimestamp"), now)]


def table(
    columns: Sequence[Column],
    objects: Sequence[Mapping[str, Any]],
    cells: Sequence[list[str]],
    *,
    include_object: bool = False,
) -> dict[str, Any]:
    """A ``meta.k8s.io/v1 Table``: each row's cells and its object's metadata (or the whole
    object, ``includeObject=Object``)."""
    rows = []
    for obj, row in zip(objects, cells, strict=True):
        embedded: Mapping[str, Any] = (
            obj
            if include_object
            else {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            }
        )
        rows.append({"cells": row, "object": embedded})
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": ""},
        "columnDefinitions": [
            {
                "name": c.name,
                "type": "string",
                "format": c.format,
                "description": c.description or c.name,
                "priority": c.priority,
            }
            for c in columns
        ],
        "rows": rows,
    }


# ------------------------------------------------------------------------------- handlers


@dataclass(slots=True)
class Cluster:
    """What the handlers need: the pods (for namespaces) and when the server started."""

    manager: PodManager
    started: datetime
    #: The last version each node's runtime gave: a node whose runtime stops answering keeps
    #: showing what it ran.
    versions: dict[str, str] = field(default_factory=dict)


CLUSTER = web.AppKey("cluster", Cluster)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(data, separators=(",", ":")).encode(),
        content_type="application/json",
    )


def _failure(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> web.Response:
    return _json(kube_status(code, reason, message, details=details), code)


def not_found(resource: str, name: str) -> web.Response:
    """The apiserver's 404 for a named object: ``nodes "x" not found``."""
    return _failure(
        404, "NotFound", f'{resource} "{name}" not found', {"name": name, "kind": resource}
    )


def _wants_table(request: web.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "")


def _refuse_watch(request: web.Request, resource: str) -> web.Response | None:
    if request.query.get("watch", "").lower() in ("true", "1"):
        return _failure(
            405, "MethodNotAllowed", f"watch is not supported on {resource} by streamsrv"
        )
    return None


def _selected(request: web.Request, objs: list[dict[str, Any]]) -> list[dict[str, Any]] | str:
    """``objs`` that the request's label and field selectors keep; an error text for a
    field selector on a field other than ``metadata.name``."""
    labels = request.query.get("labelSelector", "")
    fields = request.query.get("fieldSelector", "")
    try:
        terms = parse_field_selector(fields, ("metadata.name",))
    except UnsupportedField as exc:
        return str(exc)
    return [
        obj
        for obj in objs
        if fields_match({"metadata.name": obj["metadata"]["name"]}, terms)
        and matches_labels(obj["metadata"].get("labels", {}), labels)
    ]


async def _nodes(request: web.Request) -> list[dict[str, Any]]:
    cluster = request.app[CLUSTER]
    state_dir = request.app.get(STATE_DIR) or cluster.manager.state_dir or default_state_dir()
    found, machine = await asyncio.gather(
        runtime_nodes(cluster.manager.runtime), asyncio.to_thread(read_machine, state_dir)
    )
    now = datetime.now(UTC)
    out = []
    for node in found:
        if node.down and node.name in cluster.versions:
            node = replace(node, runtime_version=cluster.versions[node.name])
        elif not node.down:
            cluster.versions[node.name] = node.runtime_version
        out.append(render_node(node, machine, created=cluster.started, now=now))
    return out


def _list(
    request: web.Request,
    kind: str,
    objs: list[dict[str, Any]],
    columns: Sequence[Column],
    cells: Any,
) -> web.Response:
    kept = _selected(request, objs)
    if isinstance(kept, str):
        return _failure(400, "BadRequest", kept)
    if _wants_table(request):
        now = datetime.now(UTC)
        return _json(
            table(
                columns,
                kept,
                [cells(o, now) for o in kept],
                include_object=request.query.get("includeObject") == "Object",
            )
        )
    return _json(
        {
            "kind": f"{kind}List",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": ""},
            "items": kept,
        }
    )


def _one(
    request: web.Request, obj: dict[str, Any], columns: Sequence[Column], cells: Any
) -> web.Response:
    if _wants_table(request):
        return _json(
            table(
                columns,
                [obj],
                [cells(obj, datetime.now(UTC))],
                include_object=request.query.get("includeObject") == "Object",
            )
        )
    return _json(obj)


async def list_nodes(request: web.Request) -> web.Response:
    return _refuse_watch(request, "nodes") or _list(
        request, "Node", await _nodes(request), NODE_COLUMNS, node_cells
    )


async def get_node(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    for node in await _nodes(request):
        if node["metadata"]["name"] == name:
            return _one(request, node, NODE_COLUMNS, node_cells)
    return not_found("nodes", name)


async def _namespaces(request: web.Request) -> list[dict[str, Any]]:
    cluster = request.app[CLUSTER]
    pods = await cluster.manager.list()
    found = namespaces(cluster.started, ((p.spec.namespace, p.sandbox.created_at) for p in pods))
    return [render_namespace(name, created) for name, created in found.items()]


async def list_namespaces(request: web.Request) -> web.Response:
    return _refuse_watch(request, "namespaces") or _list(
        request, "Namespace", await _namespaces(request), NAMESPACE_COLUMNS, namespace_cells
    )


async def get_namespace(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    for ns in await _namespaces(request):
        if ns["metadata"]["name"] == name:
            return _one(request, ns, NAMESPACE_COLUMNS, namespace_cells)
    return not_found("namespaces", name)


async def get_lease(request: web.Request) -> web.Response:
    """A node's Lease in ``kube-node-lease``, for each node :func:`runtime_nodes` names; the
    apiserver's 404 for any other lease."""
    ns, name = request.match_info["namespace"], request.match_info["name"]
    if ns == NODE_LEASE_NAMESPACE:
        cluster = request.app[CLUSTER]
        for node in await runtime_nodes(cluster.manager.runtime):
            if node.name == name:
                return _json(render_lease(name, created=cluster.started, now=datetime.now(UTC)))
    return _failure(
        404,
        "NotFound",
        f'leases.coordination.k8s.io "{name}" not found',
        {"name": name, "group": "coordination.k8s.io", "kind": "leases"},
    )


async def read_only(request: web.Request) -> web.Response:
    """Writes to nodes and namespaces: refused, saying why."""
    resource = "nodes" if request.path.startswith("/api/v1/nodes") else "namespaces"
    why = (
        "the nodes are the runtimes streamsrv was started with"
        if resource == "nodes"
        else "a namespace exists while a pod is in it, and a pod can be created in any "
        "namespace without one"
    )
    return _failure(405, "MethodNotAllowed", f"{resource} are read-only in streamsrv: {why}")


def ephemeral_message(pod: str, image: str = "") -> str:
    """Why ``kubectl debug`` cannot add an ephemeral container, and what to run instead.

    No double quotes: kubectl quotes the whole message when it prints it."""
    image = image if image and '"' not in image and len(image) <= 256 else "IMAGE"
    return (
        "streamsrv's container runtimes cannot add ephemeral containers to a running pod; "
        f"debug a copy of the pod instead: kubectl debug {pod} -it --copy-to={pod}-debug "
        f"--image={image}"
    )


def _patched_image(body: bytes) -> str:
    """The image of the last ephemeral container in kubectl's patch, if it is there."""
    try:
        doc = json.loads(body)
        image = doc["spec"]["ephemeralContainers"][-1]["image"]
    except (ValueError, KeyError, IndexError, TypeError):
        return ""
    return image if isinstance(image, str) else ""


async def ephemeral_containers(request: web.Request) -> web.Response:
    """``pods/{name}/ephemeralcontainers``: the pod's own 404 if there is no such pod, else
    the apiserver's 404 for a subresource it does not serve (no ``details.name``: kubectl
    1.27-1.33 tell it from a missing pod by that, and print "ephemeral containers are
    disabled for this cluster" with our message)."""
    ns, name = request.match_info["namespace"], request.match_info["name"]
    if await request.app[CLUSTER].manager.get(ns, name) is None:
        return not_found("pods", name)
    image = _patched_image(await request.read()) if request.can_read_body else ""
    return _failure(404, "NotFound", ephemeral_message(name, image), {"group": "", "kind": "pods"})


def add_cluster_routes(app: web.Application, manager: PodManager) -> None:
    """Mount nodes, namespaces and the ephemeral-containers answer on ``app`` (behind the
    gateway's token check, ``gateway.auth_and_errors``)."""
    app[CLUSTER] = Cluster(manager, datetime.now(UTC).replace(microsecond=0))
    r = app.router
    r.add_get("/api/v1/nodes", list_nodes)
    r.add_get("/api/v1/nodes/{name}", get_node)
    r.add_get("/api/v1/namespaces", list_namespaces)
    r.add_get("/api/v1/namespaces/{name}", get_namespace)
    r.add_get("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}", get_lease)
    for path in ("/api/v1/nodes", "/api/v1/nodes/{name}", "/api/v1/namespaces",
                 "/api/v1/namespaces/{name}"):  # fmt: skip
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            r.add_route(method, path, read_only)
    path = "/api/v1/namespaces/{namespace}/pods/{name}/ephemeralcontainers"
    for method in ("GET", "PUT", "PATCH"):
        r.add_route(method, path, ephemeral_containers)


__all__ = [
    "BUILTIN_NAMESPACES",
    "LOCAL_NODE",
    "STATE_DIR",
    "Machine",
    "NodeRuntime",
    "add_cluster_routes",
    "ephemeral_message",
    "kubelet_version",
    "namespaces",
    "read_machine",
    "render_lease",
    "render_namespace",
    "render_node",
    "runtime_nodes",
]
