"""The pod model shared by every runtime: manifest parsing, validation, labels and status.

A pod is an infra ("pause") sandbox that owns the network, IPC and PID namespaces, plus app
containers that join them. Everything a runtime needs to find a pod again after a restart is
written into the engine as labels (``io.kubernetes.*`` as the kubelet's dockershim did, and the
manifest itself under :data:`LABEL_MANIFEST`), so no state file can be lost.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from .defaults import pod_defaults
from .errors import RequestError

LABEL_POD_NAME = "io.kubernetes.pod.name"
LABEL_POD_NAMESPACE = "io.kubernetes.pod.namespace"
LABEL_POD_UID = "io.kubernetes.pod.uid"
LABEL_CONTAINER_NAME = "io.kubernetes.container.name"
LABEL_TYPE = "io.kubernetes.docker.type"
TYPE_SANDBOX = "podsandbox"
TYPE_CONTAINER = "container"
LABEL_MANIFEST = "io.streamsrv.pod.manifest"
#: The host path a container's output is written to in the CRI log format (dockershim's key).
LABEL_LOG_PATH = "io.kubernetes.container.logpath"
#: A CRI caller's attempt numbers, when not 0 (a manifest's pods and containers are 0).
LABEL_POD_ATTEMPT = "io.streamsrv.pod.attempt"
LABEL_CONTAINER_ATTEMPT = "io.streamsrv.container.attempt"

#: ``ContainerSpec.pid_namespace``: the sandbox's PID namespace (what every app container had
#: before CRI), one of its own, or the host's.
PID_POD = "pod"
PID_CONTAINER = "container"
PID_NODE = "node"
PID_NAMESPACES = (PID_POD, PID_CONTAINER, PID_NODE)

DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"

RESTART_ALWAYS, RESTART_ON_FAILURE, RESTART_NEVER = "Always", "OnFailure", "Never"
RESTART_POLICIES = (RESTART_ALWAYS, RESTART_ON_FAILURE, RESTART_NEVER)

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class InvalidPod(RequestError, ValueError):
    """A manifest that is not a valid pod; ``causes`` are (field, message) pairs."""

    def __init__(self, name: str, causes: Sequence[tuple[str, str]]) -> None:
        self.name = name
        self.causes = list(causes)
        listed = ", ".join(f"{f}: {m}" for f, m in self.causes)
        super().__init__(f'Pod "{name}" is invalid: {listed}')


@dataclass(frozen=True, slots=True)
class ContainerPort:
    container_port: int
    name: str | None = None
    protocol: str = "TCP"


#: The volume sources served: a pod's scratch directory, and a directory of this host.
EMPTY_DIR = "emptyDir"
HOST_PATH = "hostPath"
#: ``hostPath.type`` values, as the apiserver accepts them ("" checks nothing).
HOST_PATH_TYPES = (
    "",
    "DirectoryOrCreate",
    "Directory",
    "FileOrCreate",
    "File",
    "Socket",
    "CharDevice",
    "BlockDevice",
)
#: ``emptyDir.medium`` values: a directory on disk, or a tmpfs.
EMPTY_DIR_MEDIA = ("", "Memory")


@dataclass(frozen=True, slots=True)
class Volume:
    """One of ``spec.volumes``: ``kind`` is :data:`EMPTY_DIR` or :data:`HOST_PATH`.

    ``medium`` and ``size_limit`` belong to an emptyDir (``size_limit`` as the manifest gave
    it, e.g. ``"64Mi"``); ``path`` and ``host_path_type`` to a hostPath.
    """

    name: str
    kind: str
    medium: str = ""
    size_limit: str | None = None
    path: str = ""
    host_path_type: str = ""


@dataclass(frozen=True, slots=True)
class VolumeMount:
    """One of a container's ``volumeMounts``; ``name`` is a volume of the pod."""

    name: str
    mount_path: str
    read_only: bool = False
    sub_path: str = ""


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    name: str
    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    working_dir: str | None = None
    tty: bool = False
    stdin: bool = False
    stdin_once: bool = False
    ports: tuple[ContainerPort, ...] = ()
    volume_mounts: tuple[VolumeMount, ...] = ()
    #: :data:`PID_POD` (join the sandbox's PID namespace), :data:`PID_CONTAINER` (a namespace
    #: of its own) or :data:`PID_NODE` (the host's); the CRI's ``NamespaceOption.pid``.
    pid_namespace: str = PID_POD
    #: An absolute host path: the runtime writes the container's stdout and stderr there in
    #: the CRI log format (:mod:`streamsrv.protocol.crilog`) from its start until it ends.
    #: Empty: no log file. The caller makes the directory.
    log_path: str = ""
    #: The CRI's ``ContainerMetadata.attempt``: a container made again in its sandbox (the
    #: kubelet's restart) has a new attempt, so that its name differs from the old one's.
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class PodSpec:
    name: str
    namespace: str
    uid: str
    containers: tuple[ContainerSpec, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    host_network: bool = False
    termination_grace_period: int = 30
    manifest: Mapping[str, Any] = field(default_factory=dict)
    volumes: tuple[Volume, ...] = ()
    #: The sandbox joins the host's PID namespace (``hostPID``) or IPC namespace (``hostIPC``).
    host_pid: bool = False
    host_ipc: bool = False
    #: The CRI's ``PodSandboxMetadata.attempt`` (a sandbox made again for the same pod).
    attempt: int = 0
    #: ``spec.restartPolicy``: one of :data:`RESTART_POLICIES`, applied by the gateway's pod
    #: controller (docs/api.md).
    restart_policy: str = "Always"
    #: The directory of the pod's CRI log files (the kubelet's ``/var/log/pods/NS_NAME_UID``):
    #: each container's ``log_path`` is ``NAME/ATTEMPT.log`` inside it. Empty: no log files.
    log_directory: str = ""

    def container(self, name: str) -> ContainerSpec | None:
        return next((c for c in self.containers if c.name == name), None)

    def volume(self, name: str) -> Volume | None:
        return next((v for v in self.volumes if v.name == name), None)

    def default_container(self) -> ContainerSpec:
        """The container kubectl picks without ``-c``: the annotated one, else the first."""
        wanted = self.annotations.get(DEFAULT_CONTAINER_ANNOTATION)
        return (self.container(wanted) if wanted else None) or self.containers[0]

    def sandbox_labels(self) -> dict[str, str]:
        return {
            **self.labels,
            LABEL_POD_NAME: self.name,
            LABEL_POD_NAMESPACE: self.namespace,
            LABEL_POD_UID: self.uid,
            LABEL_TYPE: TYPE_SANDBOX,
            LABEL_MANIFEST: json.dumps(self.manifest, separators=(",", ":"), sort_keys=True),
        } | ({LABEL_POD_ATTEMPT: str(self.attempt)} if self.attempt else {})

    def container_labels(self, container: ContainerSpec) -> dict[str, str]:
        labels = {
            LABEL_POD_NAME: self.name,
            LABEL_POD_NAMESPACE: self.namespace,
            LABEL_POD_UID: self.uid,
            LABEL_CONTAINER_NAME: container.name,
            LABEL_TYPE: TYPE_CONTAINER,
        }
        if container.log_path:
            labels[LABEL_LOG_PATH] = container.log_path
        if container.attempt:
            labels[LABEL_CONTAINER_ATTEMPT] = str(container.attempt)
        return labels


def pod_filter(
    namespace: str | None = None, name: str | None = None, uid: str | None = None
) -> dict[str, str]:
    """Label selector for a runtime's list calls."""
    labels: dict[str, str] = {}
    if namespace is not None:
        labels[LABEL_POD_NAMESPACE] = namespace
    if name is not None:
        labels[LABEL_POD_NAME] = name
    if uid is not None:
        labels[LABEL_POD_UID] = uid
    return labels


# --------------------------------------------------------------------------------------------
# Manifest parsing


#: Bounds of the apiserver's validation: a label value is at most 63 characters and a label
#: key's name part 63 (prefix 253); all annotations together at most 256 KiB.
MAX_LABEL_VALUE = 63
MAX_LABEL_KEY = 253 + 1 + 63
MAX_LABELS = 64
MAX_ANNOTATIONS_SIZE = 256 * 1024
SHOWN = 80  # characters of a refused value an error message repeats
#: Kubernetes sets no limit on the number of volumes or mounts; these bound the work (and the
#: length of the error) one manifest can cause, far above what a real pod uses.
MAX_VOLUMES = 256  # per pod
MAX_VOLUME_MOUNTS = 256  # per container
MAX_PATH = 4096  # characters of a hostPath path, mountPath or subPath: Linux's PATH_MAX
MAX_QUANTITY = 64  # characters of an emptyDir sizeLimit


def _shown(value: Any) -> str:
    """``repr(value)`` cut to :data:`SHOWN` characters: an error never echoes a huge value."""
    try:
        text = repr(value)
    except ValueError:  # an int of more than sys.get_int_max_str_digits() digits
        text = f"<{type(value).__name__}>"
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."


def _quoted(value: Any) -> str:
    """A string double-quoted as the apiserver shows it (else as :func:`_shown`), cut alike."""
    if not isinstance(value, str):
        return _shown(value)
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."


def _str_list(value: Any, where: str, causes: list[tuple[str, str]]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        causes.append((where, "Invalid value: must be a list of strings"))
        return ()
    return tuple(value)


def _bool(value: Any, where: str, causes: list[tuple[str, str]]) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        causes.append((where, f"Invalid value: {_shown(value)}: must be a boolean"))
        return False
    return value


def _str_map(value: Any, where: str, causes: list[tuple[str, str]]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        causes.append((where, "Invalid value: must be a map of strings to strings"))
        return {}
    return dict(value)


# Volumes ------------------------------------------------------------------------------------

#: A Kubernetes quantity (``resource.Quantity``): a decimal number with an optional SI,
#: binary (Ki..Ei) or exponent suffix. ASCII digits only (``\d`` would take any Unicode one).
_QUANTITY = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?")
_SERVED_SOURCES = f'"{EMPTY_DIR}", "{HOST_PATH}"'
#: Fields of a volumeMount whose behaviour is not served: refused rather than ignored.
_UNSERVED_MOUNT_FIELDS = ("mountPropagation", "subPathExpr", "recursiveReadOnly")


def _supported(values: Sequence[str]) -> str:
    """The apiserver's list of supported values: sorted and quoted."""
    return ", ".join(json.dumps(v) for v in sorted(values))


def _has_backstep(path: str) -> bool:
    return ".." in path.split("/")


def _path(value: Any, where: str, causes: list[tuple[str, str]], *, required: bool) -> str | None:
    """A path field that is a string of at most :data:`MAX_PATH` characters, else None."""
    if value is None or value == "":
        if required:
            causes.append((where, "Required value"))
        return None
    if not isinstance(value, str):
        causes.append((where, f"Invalid value: {_shown(value)}: must be a string"))
        return None
    if len(value) > MAX_PATH:
        causes.append((where, f"Too long: must have at most {MAX_PATH} characters"))
        return None
    return value


def _normalised(mount_path: str) -> str:
    """``mount_path`` without empty or ``.`` elements: ``/data/`` and ``//data/.`` are ``/data``."""
    return "/" + "/".join(p for p in mount_path.split("/") if p not in ("", "."))


def _bounded_list(
    value: Any, where: str, limit: int, causes: list[tuple[str, str]]
) -> list[Any] | None:
    """``value`` if it is a list of at most ``limit`` items, else None and a cause."""
    if not isinstance(value, list):
        causes.append((where, "Invalid value: must be a list"))
        return None
    if len(value) > limit:
        causes.append((where, f"Too many: {len(value)}: must have at most {limit} items"))
        return None
    return value


def _one_of(value: Any, allowed: Sequence[str], where: str, causes: list[tuple[str, str]]) -> str:
    """``value`` if it is one of ``allowed`` (absent counts as ""), else "" and a cause."""
    if value is None:
        return ""
    if not isinstance(value, str) or value not in allowed:
        causes.append(
            (where, f"Unsupported value: {_quoted(value)}: supported values: {_supported(allowed)}")
        )
        return ""
    return value


def _parse_empty_dir(
    raw: Any, name: str, where: str, causes: list[tuple[str, str]]
) -> Volume | None:
    if not isinstance(raw, dict):
        causes.append((where, "Invalid value: must be an object"))
        return None
    medium = _one_of(raw.get("medium"), EMPTY_DIR_MEDIA, f"{where}.medium", causes)
    size = raw.get("sizeLimit")
    if isinstance(size, float) or (
        isinstance(size, int) and not isinstance(size, bool) and size.bit_length() <= 128
    ):
        size = str(size)  # a quantity may be written as a JSON number
    if size is not None and (
        not isinstance(size, str)
        or len(size) > MAX_QUANTITY
        or not _QUANTITY.fullmatch(size)
        or size.startswith("-")
    ):
        causes.append(
            (
                f"{where}.sizeLimit",
                f"Invalid value: {_quoted(size)}: must be a non-negative quantity, e.g. 64Mi",
            )
        )
        size = None
    return Volume(name=name, kind=EMPTY_DIR, medium=medium, size_limit=size)


def _parse_host_path(
    raw: Any, name: str, where: str, causes: list[tuple[str, str]]
) -> Volume | None:
    if not isinstance(raw, dict):
        causes.append((where, "Invalid value: must be an object"))
        return None
    path = _path(raw.get("path"), f"{where}.path", causes, required=True)
    if path is not None:
        if not path.startswith("/"):
            causes.append(
                (
                    f"{where}.path",
                    f"Invalid value: {_quoted(path)}: must be an absolute path: "
                    "the runtime mounts it from this host",
                )
            )
        if _has_backstep(path):
            causes.append(
                (f"{where}.path", f"Invalid value: {_quoted(path)}: must not contain '..'")
            )
    kind = _one_of(raw.get("type"), HOST_PATH_TYPES, f"{where}.type", causes)
    return Volume(name=name, kind=HOST_PATH, path=path or "", host_path_type=kind)


def _parse_volumes(
    value: Any, causes: list[tuple[str, str]]
) -> tuple[list[Volume], set[str] | None]:
    """``spec.volumes``, and the names a mount may use (None: unknown, the list is refused).

    A volume whose name is valid counts as a volume of the pod even when its source is
    refused: its mounts then get no second, misleading ``Not found``.
    """
    if value is None:
        return [], set()
    items = _bounded_list(value, "spec.volumes", MAX_VOLUMES, causes)
    if items is None:
        return [], None
    volumes: list[Volume] = []
    names: set[str] = set()
    for i, raw in enumerate(items):
        where = f"spec.volumes[{i}]"
        if not isinstance(raw, dict):
            causes.append((where, "Invalid value: must be an object"))
            continue
        name = raw.get("name")
        if name is None or name == "":
            causes.append((f"{where}.name", "Required value"))
        elif not isinstance(name, str) or len(name) > 63 or not _DNS1123_LABEL.fullmatch(name):
            causes.append(
                (f"{where}.name", f"Invalid value: {_quoted(name)}: must be a DNS-1123 label")
            )
        elif name in names:
            causes.append((f"{where}.name", f"Duplicate value: {_quoted(name)}"))
        else:
            names.add(name)
        # A key set to null is absent, as in the apiserver; any other key is a volume source.
        sources = [k for k, v in raw.items() if k != "name" and v is not None]
        for key in sources:
            if key not in (EMPTY_DIR, HOST_PATH):
                causes.append(
                    (
                        f"{where}.{str(key)[:SHOWN]}",
                        f"Unsupported value: {_quoted(key)}: supported volume types: "
                        f"{_SERVED_SOURCES}",
                    )
                )
        vname = name if isinstance(name, str) else ""
        volume: Volume | None = None
        if not sources:
            causes.append((where, "Required value: must specify a volume type"))
        elif raw.get(EMPTY_DIR) is not None:
            volume = _parse_empty_dir(raw[EMPTY_DIR], vname, f"{where}.{EMPTY_DIR}", causes)
            if raw.get(HOST_PATH) is not None:
                causes.append(
                    (f"{where}.{HOST_PATH}", "Forbidden: may not specify more than 1 volume type")
                )
        elif raw.get(HOST_PATH) is not None:
            volume = _parse_host_path(raw[HOST_PATH], vname, f"{where}.{HOST_PATH}", causes)
        if volume is not None:
            volumes.append(volume)
    return volumes, names


def _volume_manifest(v: Volume) -> dict[str, Any]:
    """The manifest of a volume, from what the model keeps of it (only the set fields)."""
    if v.kind == EMPTY_DIR:
        source: dict[str, Any] = {}
        if v.medium:
            source["medium"] = v.medium
        if v.size_limit is not None:
            source["sizeLimit"] = v.size_limit
    else:
        source = {"path": v.path}
        if v.host_path_type:
            source["type"] = v.host_path_type
    return {"name": v.name, v.kind: source}


def _parse_mounts(
    value: Any, volumes: Collection[str] | None, where: str, causes: list[tuple[str, str]]
) -> tuple[VolumeMount, ...]:
    """A container's ``volumeMounts``; ``volumes`` None skips the check of their names."""
    if value is None:
        return ()
    items = _bounded_list(value, where, MAX_VOLUME_MOUNTS, causes)
    if items is None:
        return ()
    mounts: list[VolumeMount] = []
    seen: set[str] = set()
    for j, raw in enumerate(items):
        at = f"{where}[{j}]"
        if not isinstance(raw, dict):
            causes.append((at, "Invalid value: must be an object"))
            continue
        name = raw.get("name")
        if name is None or name == "":
            causes.append((f"{at}.name", "Required value"))
            name = ""
        elif not isinstance(name, str):
            causes.append((f"{at}.name", f"Invalid value: {_shown(name)}: must be a string"))
            name = ""
        elif volumes is not None and name not in volumes:
            causes.append((f"{at}.name", f"Not found: {_quoted(name)}"))
        mount_path = _path(raw.get("mountPath"), f"{at}.mountPath", causes, required=True)
        if mount_path is not None:
            shown = _quoted(mount_path)
            if not mount_path.startswith("/"):
                causes.append(
                    (f"{at}.mountPath", f"Invalid value: {shown}: must be an absolute path")
                )
            elif _has_backstep(mount_path):
                causes.append((f"{at}.mountPath", f"Invalid value: {shown}: must not contain '..'"))
            elif _normalised(mount_path) == "/":
                causes.append(
                    (f"{at}.mountPath", f"Invalid value: {shown}: must not be the root directory")
                )
            elif _normalised(mount_path) in seen:
                causes.append((f"{at}.mountPath", f"Invalid value: {shown}: must be unique"))
            else:
                seen.add(_normalised(mount_path))
        sub_path = _path(raw.get("subPath"), f"{at}.subPath", causes, required=False)
        if sub_path is not None:
            if sub_path.startswith("/"):
                causes.append(
                    (
                        f"{at}.subPath",
                        f"Invalid value: {_quoted(sub_path)}: must be a relative path",
                    )
                )
            if _has_backstep(sub_path):
                causes.append(
                    (f"{at}.subPath", f"Invalid value: {_quoted(sub_path)}: must not contain '..'")
                )
        for key in _UNSERVED_MOUNT_FIELDS:
            if raw.get(key) is not None:
                causes.append(
                    (f"{at}.{key}", f"Unsupported value: {_quoted(raw[key])}: {key} is not served")
                )
        mounts.append(
            VolumeMount(
                name=name,
                mount_path=mount_path or "",
                read_only=_bool(raw.get("readOnly"), f"{at}.readOnly", causes),
                sub_path=sub_path or "",
            )
        )
    return tuple(mounts)


# Containers ---------------------------------------------------------------------------------


def _parse_container(
    raw: Any,
    where: str,
    causes: list[tuple[str, str]],
    volumes: Collection[str] | None = None,
    pid_namespace: str = PID_POD,
) -> ContainerSpec | None:
    """One container; ``volumes``, the names its mounts may use (None: not checked)."""
    if not isinstance(raw, dict):
        causes.append((where, "Invalid value: must be an object"))
        return None
    name = raw.get("name")
    if not name:
        causes.append((f"{where}.name", "Required value"))
        name = ""
    elif not isinstance(name, str) or len(name) > 63 or not _DNS1123_LABEL.fullmatch(name):
        causes.append((f"{where}.name", f"Invalid value: {_shown(name)}: must be a DNS-1123 label"))
    image = raw.get("image")
    if not image or not isinstance(image, str):
        causes.append((f"{where}.image", "Required value"))
        image = ""
    env: list[tuple[str, str]] = []
    raw_env = raw.get("env") or []
    if not isinstance(raw_env, list):
        causes.append((f"{where}.env", "Invalid value: must be a list"))
        raw_env = []
    for i, item in enumerate(raw_env):
        ename = item.get("name") if isinstance(item, dict) else None
        if not isinstance(ename, str) or not _ENV_NAME.fullmatch(ename):
            causes.append((f"{where}.env[{i}].name", f"Invalid value: {_shown(ename)}"))
            continue
        value = item.get("value", "")
        if not isinstance(value, str):
            causes.append((f"{where}.env[{i}].value", "Invalid value: must be a string"))
            continue
        env.append((ename, value))
    ports: list[ContainerPort] = []
    raw_ports = raw.get("ports") or []
    if not isinstance(raw_ports, list):
        causes.append((f"{where}.ports", "Invalid value: must be a list"))
        raw_ports = []
    for i, item in enumerate(raw_ports):
        port = item.get("containerPort") if isinstance(item, dict) else None
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            causes.append(
                (
                    f"{where}.ports[{i}].containerPort",
                    f"Invalid value: {_shown(port)}: must be 1-65535",
                )
            )
            continue
        assert isinstance(item, dict)
        protocol = item.get("protocol", "TCP")
        if protocol not in ("TCP", "UDP", "SCTP"):
            causes.append(
                (f"{where}.ports[{i}].protocol", f"Unsupported value: {_shown(protocol)}")
            )
            continue
        pname = item.get("name")
        ports.append(ContainerPort(port, pname if isinstance(pname, str) else None, protocol))
    working_dir = raw.get("workingDir")
    if working_dir is not None and not isinstance(working_dir, str):
        causes.append((f"{where}.workingDir", "Invalid value: must be a string"))
        working_dir = None
    return ContainerSpec(
        name=name if isinstance(name, str) else "",
        image=image,
        command=_str_list(raw.get("command"), f"{where}.command", causes),
        args=_str_list(raw.get("args"), f"{where}.args", causes),
        env=tuple(env),
        working_dir=working_dir or None,
        tty=_bool(raw.get("tty"), f"{where}.tty", causes),
        stdin=_bool(raw.get("stdin"), f"{where}.stdin", causes),
        stdin_once=_bool(raw.get("stdinOnce"), f"{where}.stdinOnce", causes),
        ports=tuple(ports),
        volume_mounts=_parse_mounts(
            raw.get("volumeMounts"), volumes, f"{where}.volumeMounts", causes
        ),
        pid_namespace=pid_namespace,
    )


def _container_manifest(c: ContainerSpec) -> dict[str, Any]:
    """The manifest of a container, from what the model keeps of it."""
    out: dict[str, Any] = {"name": c.name, "image": c.image}
    if c.command:
        out["command"] = list(c.command)
    if c.args:
        out["args"] = list(c.args)
    if c.env:
        out["env"] = [{"name": n, "value": v} for n, v in c.env]
    if c.working_dir:
        out["workingDir"] = c.working_dir
    for key, flag in (("tty", c.tty), ("stdin", c.stdin), ("stdinOnce", c.stdin_once)):
        if flag:
            out[key] = True
    if c.ports:
        out["ports"] = [
            {"containerPort": p.container_port, "protocol": p.protocol}
            | ({"name": p.name} if p.name else {})
            for p in c.ports
        ]
    if c.volume_mounts:
        out["volumeMounts"] = [
            {"name": m.name, "mountPath": m.mount_path}
            | ({"readOnly": True} if m.read_only else {})
            | ({"subPath": m.sub_path} if m.sub_path else {})
            for m in c.volume_mounts
        ]
    return out


def parse_pod(manifest: Any, *, namespace: str | None = None, uid: str | None = None) -> PodSpec:
    """Validate a ``v1 Pod`` manifest (as parsed JSON/YAML) and return its spec.

    Args:
        manifest: the decoded document.
        namespace: the namespace of the request; a manifest naming another one is refused.
        uid: keep this uid (a pod read back from the engine); a new one is generated otherwise.

    Raises:
        InvalidPod: with every problem found, in the apiserver's ``field: message`` wording.
    """
    if not isinstance(manifest, dict):
        raise InvalidPod("", [("", "Invalid value: the document must be an object")])
    causes: list[tuple[str, str]] = []
    if manifest.get("apiVersion", "v1") != "v1" or manifest.get("kind", "Pod") != "Pod":
        causes.append(("kind", "Invalid value: only apiVersion v1, kind Pod is served"))
    meta = manifest.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
    name = meta.get("name")
    if not name:
        causes.append(("metadata.name", "Required value: name is required"))
        name = ""
    elif not isinstance(name, str) or len(name) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(name):
        causes.append(
            ("metadata.name", f"Invalid value: {_shown(name)}: must be a DNS-1123 subdomain")
        )
        name = str(name)[:SHOWN]  # the error names the pod: never a huge name
    ns = meta.get("namespace") or namespace or "default"
    if namespace is not None and ns != namespace:
        causes.append(
            (
                "metadata.namespace",
                "Invalid value: the namespace of the provided object does not match the "
                "namespace sent on the request",
            )
        )
    if not isinstance(ns, str) or len(ns) > 63 or not _DNS1123_LABEL.fullmatch(ns):
        causes.append(
            ("metadata.namespace", f"Invalid value: {_shown(ns)}: must be a DNS-1123 label")
        )
        ns = str(ns)[:SHOWN]
    labels = _str_map(meta.get("labels"), "metadata.labels", causes)
    if len(labels) > MAX_LABELS:
        causes.append(
            ("metadata.labels", f"Too many: {len(labels)}: must have at most {MAX_LABELS}")
        )
    for key, value in labels.items():
        if len(key) > MAX_LABEL_KEY or len(value) > MAX_LABEL_VALUE:
            causes.append(
                (
                    f"metadata.labels[{_shown(key)}]",
                    f"Invalid value: {_shown(value)}: must be no more than "
                    f"{MAX_LABEL_VALUE} characters",
                )
            )
    annotations = _str_map(meta.get("annotations"), "metadata.annotations", causes)
    size = sum(len(k) + len(v) for k, v in annotations.items())
    if size > MAX_ANNOTATIONS_SIZE:
        causes.append(
            (
                "metadata.annotations",
                f"Too long: must have at most {MAX_ANNOTATIONS_SIZE} bytes, not {size}",
            )
        )
    spec = manifest.get("spec")
    if not isinstance(spec, dict):
        causes.append(("spec", "Required value"))
        spec = {}
    # Volumes first: the containers' mounts name them.
    volumes, volume_names = _parse_volumes(spec.get("volumes"), causes)
    host_pid = _bool(spec.get("hostPID"), "spec.hostPID", causes)
    host_ipc = _bool(spec.get("hostIPC"), "spec.hostIPC", causes)
    # Checked, kept in the manifest, but no change: every container of a manifest joins the
    # sandbox's PID namespace (the kubelet would give each its own when this is false).
    share_pids = _bool(spec.get("shareProcessNamespace"), "spec.shareProcessNamespace", causes)
    if host_pid and share_pids:
        causes.append(
            (
                "spec.shareProcessNamespace",
                "Invalid value: true: ShareProcessNamespace and HostPID cannot both be enabled",
            )
        )
    pid_namespace = PID_NODE if host_pid else PID_POD
    raw_containers = spec.get("containers")
    containers: list[ContainerSpec] = []
    if not isinstance(raw_containers, list) or not raw_containers:
        causes.append(("spec.containers", "Required value"))
        raw_containers = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_containers):
        c = _parse_container(raw, f"spec.containers[{i}]", causes, volume_names, pid_namespace)
        if c is None:
            continue
        if c.name and c.name in seen:
            causes.append((f"spec.containers[{i}].name", f'Duplicate value: "{c.name}"'))
        seen.add(c.name)
        containers.append(c)
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if not isinstance(grace, int) or isinstance(grace, bool) or grace < 0:
        causes.append(("spec.terminationGracePeriodSeconds", f"Invalid value: {_shown(grace)}"))
        grace = 30
    host_network = _bool(spec.get("hostNetwork"), "spec.hostNetwork", causes)
    restart_policy = RESTART_ALWAYS
    if spec.get("restartPolicy") is not None:
        restart_policy = _one_of(
            spec["restartPolicy"], RESTART_POLICIES, "spec.restartPolicy", causes
        )
    node_name = spec.get("nodeName", "")
    if node_name is None:
        node_name = ""
    if not isinstance(node_name, str) or (
        node_name and (len(node_name) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(node_name))
    ):
        causes.append(("spec.nodeName", f"Invalid value: {_shown(node_name)}"))
        node_name = ""
    if causes:
        raise InvalidPod(str(name), causes)
    # Keep only what the pod model understands, rebuilt from the parsed values: a field we do
    # not know is never copied into the engine's labels (a manifest full of them would make
    # every later listing carry it). Status and server-set metadata are rebuilt on read.
    kept_meta: dict[str, Any] = {"name": name, "namespace": ns}
    if labels:
        kept_meta["labels"] = labels
    if annotations:
        kept_meta["annotations"] = annotations
    kept_spec: dict[str, Any] = {
        "containers": [_container_manifest(c) for c in containers],
        "terminationGracePeriodSeconds": grace,
    }
    if restart_policy != RESTART_ALWAYS:  # the default, added when the pod is rendered
        kept_spec["restartPolicy"] = restart_policy
    for key, flag in (
        ("hostNetwork", host_network),
        ("hostPID", host_pid),
        ("hostIPC", host_ipc),
        ("shareProcessNamespace", share_pids),
    ):
        if flag:
            kept_spec[key] = True
    if volumes:
        kept_spec["volumes"] = [_volume_manifest(v) for v in volumes]
    if node_name:  # a gateway fronting CRI nodes puts the pod there (docs/cri.md)
        kept_spec["nodeName"] = node_name
    stored = {"apiVersion": "v1", "kind": "Pod", "metadata": kept_meta, "spec": kept_spec}
    return PodSpec(
        name=name,
        namespace=ns,
        uid=uid or str(uuid.uuid4()),
        containers=tuple(containers),
        labels=labels,
        annotations=annotations,
        host_network=host_network,
        termination_grace_period=grace,
        manifest=stored,
        volumes=tuple(volumes),
        host_pid=host_pid,
        host_ipc=host_ipc,
        restart_policy=restart_policy,
    )


def pod_from_labels(labels: Mapping[str, str]) -> PodSpec:
    """Rebuild a pod's spec from its sandbox's labels (see :meth:`PodSpec.sandbox_labels`)."""
    manifest = json.loads(labels[LABEL_MANIFEST])
    spec = manifest.get("spec") if isinstance(manifest, dict) else None
    if isinstance(spec, dict) and spec.get("containers") == []:
        # A sandbox made through CRI (RunPodSandbox): its containers come one by one later,
        # so there is no pod manifest to validate, only what the sandbox itself needs.
        pod = PodSpec(
            name=labels[LABEL_POD_NAME],
            namespace=labels[LABEL_POD_NAMESPACE],
            uid=labels[LABEL_POD_UID],
            containers=(),
            host_network=spec.get("hostNetwork") is True,
            host_pid=spec.get("hostPID") is True,
            host_ipc=spec.get("hostIPC") is True,
            manifest=manifest,
        )
    else:
        pod = parse_pod(manifest, uid=labels[LABEL_POD_UID])
    attempt = labels.get(LABEL_POD_ATTEMPT, "")
    if attempt.isdigit() and len(attempt) <= 10:
        pod = replace(pod, attempt=int(attempt))
    return pod


# --------------------------------------------------------------------------------------------
# Status as the apiserver shows it


@dataclass(frozen=True, slots=True)
class ContainerState:
    """What a runtime knows of one app container."""

    id: str
    name: str
    image: str
    image_id: str
    state: str  # created | running | exited | unknown
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    reason: str | None = None
    runtime: str = "docker"
    labels: Mapping[str, str] = field(default_factory=dict)
    log_path: str = ""  # the container's CRI log file (ContainerSpec.log_path), if any

    @property
    def pod_uid(self) -> str:
        return self.labels.get(LABEL_POD_UID, "")

    @property
    def attempt(self) -> int:
        """Which instance of the pod's container this is: 0, then one more per restart."""
        try:
            return int(self.labels.get(LABEL_CONTAINER_ATTEMPT, 0))
        except ValueError:
            return 0


@dataclass(frozen=True, slots=True)
class SandboxState:
    id: str
    pod: PodSpec
    ready: bool
    created_at: datetime
    ip: str | None = None
    #: The node the pod runs on (``spec.nodeName``): set by a gateway that fronts several CRI
    #: endpoints; empty renders as "streamsrv".
    node: str = ""


def _ts(when: datetime | None) -> str | None:
    if when is None:
        return None
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_phase(sandbox: SandboxState, containers: Sequence[ContainerState]) -> str:
    """Kubernetes phase from the states of the sandbox's app containers and the pod's restart
    policy (a container that will be started again keeps its pod Running, as the kubelet's
    ``getPhase`` has it)."""
    pod = sandbox.pod
    by_name = {c.name: c for c in containers}
    states = [by_name.get(c.name) for c in pod.containers]
    if any(s is None or s.state == "created" for s in states):
        return "Pending"
    if all(s is not None and s.state == "running" for s in states) and sandbox.ready:
        return "Running"
    if all(s is not None and s.state == "exited" for s in states):
        failed = any(s is not None and s.exit_code for s in states)
        if pod.restart_policy == RESTART_ALWAYS or (
            failed and pod.restart_policy == RESTART_ON_FAILURE
        ):
            return "Running"
        return "Failed" if failed else "Succeeded"
    if any(s is not None and s.state == "running" for s in states):
        return "Running"
    return "Unknown"


def _terminated(state: ContainerState) -> dict[str, Any]:
    return {
        "exitCode": state.exit_code or 0,
        "reason": state.reason or ("Completed" if not state.exit_code else "Error"),
        "startedAt": _ts(state.started_at),
        "finishedAt": _ts(state.finished_at),
        "containerID": f"{state.runtime}://{state.id}",
    }


def _container_status(
    spec: ContainerSpec,
    state: ContainerState | None,
    previous: ContainerState | None = None,
    waiting: tuple[str, str] | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "name": spec.name,
        "image": spec.image,
        "imageID": state.image_id if state else "",
        "ready": bool(state and state.state == "running"),
        "restartCount": state.attempt if state else 0,
        "started": bool(state and state.state == "running"),
        "lastState": {},
    }
    if previous is not None and previous.state == "exited":
        status["lastState"] = {"terminated": _terminated(previous)}
    if state is None:
        status["state"] = {"waiting": {"reason": "ContainerCreating"}}
        return status
    status["containerID"] = f"{state.runtime}://{state.id}"
    if state.state == "running":
        status["state"] = {"running": {"startedAt": _ts(state.started_at)}}
    elif state.state == "exited" and waiting is not None:
        # Waiting to be started again: the kubelet shows the last run as lastState.
        status["state"] = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
        status["lastState"] = {"terminated": _terminated(state)}
    elif state.state == "exited":
        status["state"] = {"terminated": _terminated(state)}
    else:
        status["state"] = {"waiting": {"reason": state.reason or "ContainerCreating"}}
    return status


def render_pod(
    sandbox: SandboxState,
    containers: Sequence[ContainerState],
    *,
    previous: Mapping[str, ContainerState] | None = None,
    waiting: Mapping[str, tuple[str, str]] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``v1 Pod`` object the gateway returns.

    Args:
        containers: the current instance of each app container.
        previous: the instance before it, by container name (after a restart).
        waiting: a (reason, message) for a container waiting to be started again (back-off).
        metadata: labels and annotations that replace the manifest's (a patch).
    """
    pod = sandbox.pod
    by_name = {c.name: c for c in containers}
    manifest = dict(pod.manifest)
    meta = dict(manifest.get("metadata", {}))
    for key in ("labels", "annotations"):
        if metadata is not None and key in metadata:
            if metadata[key]:
                meta[key] = dict(metadata[key])
            else:
                meta.pop(key, None)
    meta.update(
        {
            "name": pod.name,
            "namespace": pod.namespace,
            "uid": pod.uid,
            "creationTimestamp": _ts(sandbox.created_at),
            "resourceVersion": str(int(sandbox.created_at.timestamp() * 1000)),
        }
    )
    phase = pod_phase(sandbox, containers)
    previous = previous or {}
    waiting = waiting or {}
    statuses = [
        _container_status(c, by_name.get(c.name), previous.get(c.name), waiting.get(c.name))
        for c in pod.containers
    ]
    all_ready = all(s["ready"] for s in statuses)
    start = _ts(sandbox.created_at)
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [
            {"type": "Initialized", "status": "True", "lastTransitionTime": start},
            {"type": "Ready", "status": str(all_ready), "lastTransitionTime": start},
            {"type": "ContainersReady", "status": str(all_ready), "lastTransitionTime": start},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": start},
        ],
        "hostIP": "127.0.0.1",
        "startTime": start,
        "containerStatuses": statuses,
        "qosClass": "BestEffort",
    }
    if sandbox.ip:
        status["podIP"] = sandbox.ip
        status["podIPs"] = [{"ip": sandbox.ip}]
    spec = pod_defaults(manifest)["spec"]  # what an apiserver fills in (defaults.py)
    if sandbox.node:
        spec["nodeName"] = sandbox.node
    else:
        spec.setdefault("nodeName", "streamsrv")
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}
