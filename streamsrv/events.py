"""Events about pods, as the kubelet and scheduler record them, kept in memory by the gateway.

``kubectl describe pod`` and ``kubectl get events`` read these: Scheduled, Pulling, Pulled,
Created, Started, Killing, Failed and BackOff, with the kubelet's reasons and messages. A
repeat of the same reason and message for the same object is counted on the first event, as
the apiserver's event correlator does. At most :data:`MAX_EVENTS` are kept (the oldest go);
like the apiserver's one-hour TTL, they are not meant to last.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from .watch import ADDED, DELETED, MODIFIED, Hub

MAX_EVENTS = 2000
NORMAL, WARNING = "Normal", "Warning"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class EventStore:
    def __init__(self, hub: Hub, node: str = "streamsrv", limit: int = MAX_EVENTS) -> None:
        self.hub = hub
        self.node = node
        self._limit = limit
        # (namespace, pod uid, field path, reason, message) -> the event object
        self._events: OrderedDict[tuple[str, str, str, str, str], dict[str, Any]] = OrderedDict()

    def record(
        self,
        pod: Any,
        reason: str,
        message: str,
        *,
        type_: str = NORMAL,
        container: str | None = None,
        component: str = "kubelet",
        host: str | None = None,
    ) -> None:
        """An event about ``pod`` (a :class:`~streamsrv.pods.PodSpec`), or about one of its
        containers."""
        field_path = f"spec.containers{{{container}}}" if container else ""
        key = (pod.namespace, pod.uid, field_path, reason, message)
        rv = self.hub.next_rv()
        now = _now()
        old = self._events.pop(key, None)
        if old is not None:
            obj = dict(old)
            obj["count"] = int(old.get("count", 1)) + 1
            obj["lastTimestamp"] = now
            obj["metadata"] = {**old["metadata"], "resourceVersion": str(rv)}
            self._events[key] = obj
            self.hub.publish(MODIFIED, "Event", pod.namespace, obj["metadata"]["name"], obj, rv)
            return
        involved: dict[str, Any] = {
            "kind": "Pod",
            "namespace": pod.namespace,
            "name": pod.name,
            "uid": pod.uid,
            "apiVersion": "v1",
        }
        if field_path:
            involved["fieldPath"] = field_path
        source: dict[str, str] = {"component": component}
        if component == "kubelet":
            source["host"] = host or self.node
        name = f"{pod.name}.{secrets.token_hex(8)}"
        obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": name,
                "namespace": pod.namespace,
                "uid": secrets.token_hex(16),
                "resourceVersion": str(rv),
                "creationTimestamp": now,
            },
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "source": source,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "eventTime": None,
            "count": 1,
            "type": type_,
            "reportingComponent": component,
            "reportingInstance": source.get("host", ""),
        }
        if component == "default-scheduler":
            obj["eventTime"] = _micro()
        self._events[key] = obj
        self.hub.publish(ADDED, "Event", pod.namespace, name, obj, rv)
        while len(self._events) > self._limit:
            _, gone = self._events.popitem(last=False)
            meta = gone["metadata"]
            self.hub.publish(
                DELETED, "Event", meta["namespace"], meta["name"], gone, self.hub.next_rv()
            )

    def list(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self._events.values()
            if namespace is None or e["metadata"]["namespace"] == namespace
        ]

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return next(
            (
                e
                for e in self._events.values()
                if e["metadata"]["namespace"] == namespace and e["metadata"]["name"] == name
            ),
            None,
        )


def event_fields(event: dict[str, Any]) -> dict[str, str]:
    """The field selectors the apiserver takes for events."""
    inv = event.get("involvedObject", {})
    meta = event.get("metadata", {})
    return {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "involvedObject.kind": inv.get("kind", ""),
        "involvedObject.namespace": inv.get("namespace", ""),
        "involvedObject.name": inv.get("name", ""),
        "involvedObject.uid": inv.get("uid", ""),
        "involvedObject.apiVersion": inv.get("apiVersion", ""),
        "involvedObject.resourceVersion": inv.get("resourceVersion", ""),
        "involvedObject.fieldPath": inv.get("fieldPath", ""),
        "reason": event.get("reason", ""),
        "reportingComponent": event.get("reportingComponent", ""),
        "source": event.get("source", {}).get("component", ""),
        "type": event.get("type", ""),
    }
