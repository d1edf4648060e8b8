"""The defaults a real apiserver fills into every pod it returns.

An apiserver defaults a pod when it decodes it (the ``SetDefaults_*`` functions of
``pkg/apis/core/v1``) and its admission plugins add a few more (Priority,
DefaultTolerationSeconds, ServiceAccount). Clients rely on them: kubectl's ``debug``, for one,
reads ``spec.securityContext`` without checking that it is there. :func:`pod_defaults` adds
exactly what is missing and never changes a value the manifest set; the pod model stores only
what the user gave, and the gateway renders every pod through this function
(docs/architecture.md, "Pod defaults").

Pure: no I/O, nothing of the rest of streamsrv.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

#: ``spec`` fields and their default values (``PodSpec`` defaulting, and the Priority
#: admission plugin's ``priority`` and ``preemptionPolicy``).
SPEC_DEFAULTS: Mapping[str, Any] = {
    "restartPolicy": "Always",
    "dnsPolicy": "ClusterFirst",
    "schedulerName": "default-scheduler",
    "securityContext": {},
    "terminationGracePeriodSeconds": 30,
    "enableServiceLinks": True,
    "priority": 0,
    "preemptionPolicy": "PreemptLowerPriority",
}
#: Every container's (and init container's) defaults, besides ``imagePullPolicy``.
CONTAINER_DEFAULTS: Mapping[str, Any] = {
    "terminationMessagePath": "/dev/termination-log",
    "terminationMessagePolicy": "File",
    "resources": {},
}
#: The service account the ServiceAccount admission plugin gives a pod that names none.
SERVICE_ACCOUNT = "default"
#: The taints the DefaultTolerationSeconds admission plugin tolerates for 300 s.
NOT_READY = "node.kubernetes.io/not-ready"
UNREACHABLE = "node.kubernetes.io/unreachable"
TOLERATION_SECONDS = 300


def image_pull_policy(image: str) -> str:
    """``Always`` for an image tagged ``latest`` or not tagged at all, else ``IfNotPresent``.

    An image named by digest alone (``name@sha256:...``) has no tag, so it is not "latest";
    a registry's port (``host:5000/name``) is not a tag.
    """
    name, at, _ = image.partition("@")
    _, sep, tag = name.rsplit("/", 1)[-1].rpartition(":")
    if sep:
        return "Always" if tag == "latest" else "IfNotPresent"
    return "IfNotPresent" if at else "Always"


def _tolerates(toleration: Any, key: str) -> bool:
    """Whether ``toleration`` already covers the NoExecute taint ``key``, as the admission
    plugin decides it: the same key or none (every key), the NoExecute effect or none."""
    if not isinstance(toleration, dict):
        return False
    return (toleration.get("key") or "") in ("", key) and (toleration.get("effect") or "") in (
        "",
        "NoExecute",
    )


def _setdefault(obj: dict[str, Any], key: str, value: Any) -> None:
    """``obj[key] = value`` when the key is absent or null (a Go nil is defaulted too)."""
    if obj.get(key) is None:
        obj[key] = copy.deepcopy(value)


def _container(c: Any, host_network: bool) -> None:
    if not isinstance(c, dict):
        return
    for key, value in CONTAINER_DEFAULTS.items():
        _setdefault(c, key, value)
    image = c.get("image")
    if c.get("imagePullPolicy") in (None, "") and isinstance(image, str):
        c["imagePullPolicy"] = image_pull_policy(image)
    resources = c["resources"]
    if isinstance(resources, dict):
        limits = resources.get("limits")
        if isinstance(limits, dict) and limits:
            # An unset request of a limited resource is the limit.
            requests = resources.get("requests")
            if not isinstance(requests, dict):
                requests = resources["requests"] = {}
            for name, amount in limits.items():
                requests.setdefault(name, amount)
    ports = c.get("ports")
    if isinstance(ports, list):
        for port in ports:
            if not isinstance(port, dict):
                continue
            _setdefault(port, "protocol", "TCP")
            if host_network and port.get("hostPort") in (None, 0):
                port["hostPort"] = port.get("containerPort")


def _volume(v: Any) -> None:
    if not isinstance(v, dict):
        return
    sources = [k for k, value in v.items() if k != "name" and value is not None]
    if not sources:
        v["emptyDir"] = {}
    host_path = v.get("hostPath")
    if isinstance(host_path, dict):
        _setdefault(host_path, "type", "")


def pod_defaults(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the ``v1 Pod`` ``manifest`` with the apiserver's defaults where unset.

    ``manifest`` itself is never changed; a value it sets is never replaced. Parts that are
    not what a pod has (a spec that is not an object, say) are left as they are.
    """
    out = copy.deepcopy(dict(manifest))
    spec = out.get("spec")
    if spec is None:
        spec = out["spec"] = {}
    if not isinstance(spec, dict):
        return out
    for key, value in SPEC_DEFAULTS.items():
        _setdefault(spec, key, value)
    account = spec.get("serviceAccountName") or spec.get("serviceAccount") or SERVICE_ACCOUNT
    for key in ("serviceAccountName", "serviceAccount"):
        if not spec.get(key):
            spec[key] = account
    tolerations = spec.get("tolerations")
    if tolerations is None:
        tolerations = spec["tolerations"] = []
    if isinstance(tolerations, list):
        for key in (NOT_READY, UNREACHABLE):
            if not any(_tolerates(t, key) for t in tolerations):
                tolerations.append(
                    {
                        "key": key,
                        "operator": "Exists",
                        "effect": "NoExecute",
                        "tolerationSeconds": TOLERATION_SECONDS,
                    }
                )
    host_network = spec.get("hostNetwork") is True
    for kind in ("initContainers", "containers"):
        containers = spec.get(kind)
        if isinstance(containers, list):
            for c in containers:
                _container(c, host_network)
    volumes = spec.get("volumes")
    if isinstance(volumes, list):
        for v in volumes:
            _volume(v)
    return out


__all__ = ["image_pull_policy", "pod_defaults"]
