"""The gateway's pod controller: what the kubelet's sync loop does for a node, kept small.

Every :data:`INTERVAL` seconds (and at once after the gateway changes a pod) it lists the pods
from the runtime and
- publishes what changed to the watch hub (:mod:`streamsrv.watch`), each change with its own
  resource version, so ``kubectl get -w``, ``wait`` and ``run -i`` see pods move;
- applies each pod's ``restartPolicy`` to containers that ended: Always restarts them,
  OnFailure restarts a non-zero exit, Never leaves them. Restarts back off as the kubelet's do
  (the first at once, then 10 s, doubling to 300 s; reset once a run lasted 10 minutes), shown
  as ``CrashLoopBackOff`` with a ``BackOff`` event while waiting;
- makes a pod's sandbox again (one attempt on) when it is gone, an engine restart say, unless
  the policy leaves every container where it is.

The runtime holds every pod's state, so a restarted gateway carries on from what it lists; only
the back-off delays start again from the beginning. docs/api.md describes it for users.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from .errors import BackendError
from .events import WARNING
from .podmanager import Pod, PodManager
from .pods import RESTART_ALWAYS, RESTART_NEVER, RESTART_ON_FAILURE, ContainerState
from .watch import ADDED, DELETED, MODIFIED, Hub

log = logging.getLogger(__name__)

INTERVAL = 1.0
BACKOFF_INITIAL = 10.0
BACKOFF_MAX = 300.0
#: A run this long resets the container's back-off.
BACKOFF_RESET = 600.0
CRASH_LOOP = "CrashLoopBackOff"


@dataclass(slots=True)
class _Backoff:
    delay: float = 0.0  # before the next restart, counted from the container's end
    attempt: int = -1  # the instance the delay was last used for
    announced: int = -1  # the instance a BackOff event was recorded for


def _key(pod: Pod) -> str:
    return f"{pod.spec.namespace}/{pod.spec.name}"


def wants_restart(policy: str, state: ContainerState) -> bool:
    """Whether ``restartPolicy`` starts an ended container again."""
    if state.state != "exited":
        return False
    if policy == RESTART_ALWAYS:
        return True
    return policy == RESTART_ON_FAILURE and bool(state.exit_code)


class PodController:
    def __init__(self, manager: PodManager, hub: Hub, interval: float = INTERVAL) -> None:
        self.manager = manager
        self.hub = hub
        self.interval = interval
        # pod key -> (uid, resource version, rendered object without its version)
        self._seen: dict[str, tuple[str, int, dict[str, Any]]] = {}
        self._pods: dict[str, Pod] = {}  # pod key -> the pod as last listed
        self._backoff: dict[tuple[str, str], _Backoff] = {}
        self._kick = asyncio.Event()
        self._sync_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._busy: set[tuple[str, str]] = set()  # (uid, container or "") being restarted
        self._work: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------------------ running

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="pod controller")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._work) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._task = None

    def kick(self) -> None:
        """Look again now (the gateway changed a pod)."""
        self._kick.set()

    async def _loop(self) -> None:
        while True:
            try:
                pods = await self.sync()
                self._apply(pods)
            except asyncio.CancelledError:
                raise
            except BackendError as exc:
                log.debug("pod controller: %s", exc)
            except Exception:
                log.exception("pod controller")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._kick.wait()
            self._kick.clear()

    # ------------------------------------------------------------------------------ state

    async def sync(self, namespace: str | None = None, name: str | None = None) -> list[Pod]:
        """List the pods (all, a namespace's or one), publish what changed, and return them
        with the controller's view added (back-off waits); each rendered with its version."""
        async with self._sync_lock:
            pods = await self.manager.list(namespace, name)
            now = time.time()
            pods = [self._with_waiting(p, now) for p in pods]
            present = set()
            for p in pods:
                key = _key(p)
                present.add(key)
                unchanged = self._pods.get(key) == p and key in self._seen
                self._pods[key] = p
                if unchanged:  # the same state renders the same object: nothing to compare
                    continue
                obj = p.render()
                obj["metadata"].pop("resourceVersion", None)
                old = self._seen.get(key)
                if old is not None and old[0] == p.spec.uid and old[2] == obj:
                    continue
                if old is not None and old[0] != p.spec.uid:  # same name, a new pod
                    self._publish(DELETED, key, old)
                    old = None
                rv = self.hub.next_rv()
                self._seen[key] = (p.spec.uid, rv, obj)
                self.hub.publish(
                    ADDED if old is None else MODIFIED,
                    "Pod",
                    p.spec.namespace,
                    p.spec.name,
                    self.versioned(key),
                    rv,
                )
            for key in [k for k in self._seen if self._in_scope(k, namespace, name)]:
                if key not in present:
                    self._publish(DELETED, key, self._seen.pop(key))
                    self._pods.pop(key, None)
            for bkey in [k for k in self._backoff if k[0] not in {p.spec.uid for p in pods}]:
                if namespace is None and name is None:
                    self._backoff.pop(bkey, None)
            return pods

    @staticmethod
    def _in_scope(key: str, namespace: str | None, name: str | None) -> bool:
        ns, _, n = key.partition("/")
        return (namespace is None or ns == namespace) and (name is None or n == name)

    def _publish(self, type_: str, key: str, seen: tuple[str, int, dict[str, Any]]) -> None:
        ns, _, name = key.partition("/")
        rv = self.hub.next_rv()
        obj = {**seen[2], "metadata": {**seen[2]["metadata"], "resourceVersion": str(rv)}}
        self.hub.publish(type_, "Pod", ns, name, obj, rv)

    def versioned(self, key: str) -> dict[str, Any]:
        """The pod last seen under ``key``, with its resource version."""
        _, rv, obj = self._seen[key]
        return {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(rv)}}

    def still_running(self, namespace: str, name: str, container_id: str) -> bool:
        """Whether that container instance was running when the pods were last listed (at
        most :data:`INTERVAL` ago): what a follow of its log asks, without a listing each."""
        pod = self._pods.get(f"{namespace}/{name}")
        current = next((c for c in pod.containers if c.id == container_id), None) if pod else None
        return current is not None and current.state == "running"

    def render(self, pod: Pod) -> dict[str, Any]:
        """``pod`` as last synced (with its version), else rendered now."""
        key = _key(pod)
        seen = self._seen.get(key)
        if seen is not None and seen[0] == pod.spec.uid:
            return self.versioned(key)
        return pod.render()

    # ------------------------------------------------------------------------------ restarts

    def _with_waiting(self, pod: Pod, now: float) -> Pod:
        waiting: dict[str, tuple[str, str]] = {}
        if not pod.sandbox.ready:
            return pod
        for c in pod.containers:
            b = self._backoff.get((pod.spec.uid, c.name))
            if b is None or not wants_restart(pod.spec.restart_policy, c):
                continue
            if self._due(b, c) > now:
                waiting[c.name] = (
                    CRASH_LOOP,
                    f"back-off {int(b.delay)}s restarting failed container={c.name} "
                    f"pod={pod.spec.name}_{pod.spec.namespace}({pod.spec.uid})",
                )
                self._announce(pod, c, b)
        return replace(pod, waiting=waiting) if waiting else pod

    def _announce(self, pod: Pod, c: ContainerState, b: _Backoff) -> None:
        """One BackOff event for each wait (repeats are counted on it)."""
        if b.announced == c.attempt:
            return
        b.announced = c.attempt
        spec = pod.spec
        self.manager.event(
            spec,
            "BackOff",
            f"Back-off restarting failed container {c.name} in pod "
            f"{spec.name}_{spec.namespace}({spec.uid})",
            type_=WARNING,
            container=c.name,
        )

    @staticmethod
    def _due(b: _Backoff, c: ContainerState) -> float:
        finished = (c.finished_at or datetime.now(UTC)).timestamp()
        return finished + b.delay

    def _apply(self, pods: list[Pod]) -> None:
        now = time.time()
        for pod in pods:
            spec = pod.spec
            policy = spec.restart_policy
            if pod.stale or pod.stale_sandboxes:
                work = self.manager.collect_stale(spec.namespace, spec.name, spec.uid)
                self._spawn(("gc", spec.uid), work)
            if not pod.sandbox.ready:
                ended = all(c.state == "exited" for c in pod.containers)
                done = policy == RESTART_NEVER or (
                    policy == RESTART_ON_FAILURE
                    and ended
                    and not any(c.exit_code for c in pod.containers)
                )
                if not done and len(pod.containers) == len(spec.containers):
                    self._spawn((spec.uid, ""), self._recreate(pod))
                continue
            for c in pod.containers:
                if not wants_restart(policy, c):
                    if c.state == "running":
                        b = self._backoff.get((spec.uid, c.name))
                        started = c.started_at.timestamp() if c.started_at else now
                        if b is not None and now - started > BACKOFF_RESET:
                            self._backoff.pop((spec.uid, c.name), None)
                    continue
                b = self._backoff.setdefault((spec.uid, c.name), _Backoff())
                ran = (
                    (c.finished_at - c.started_at).total_seconds()
                    if c.started_at and c.finished_at
                    else 0.0
                )
                if b.attempt != c.attempt and ran > BACKOFF_RESET:
                    b.delay = 0.0
                if self._due(b, c) > now:
                    self._announce(pod, c, b)
                    continue
                self._spawn((spec.uid, c.name), self._restart(pod, c, b))

    def _spawn(self, key: tuple[str, str], work: Any) -> None:
        if key in self._busy:
            work.close()
            return
        self._busy.add(key)

        async def run() -> None:
            try:
                await work
            except BackendError as exc:
                log.warning("pod controller: %s", exc)
            except Exception:
                log.exception("pod controller")
            finally:
                self._busy.discard(key)
                self.kick()

        task = asyncio.create_task(run(), name=f"pod controller {key}")
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    async def _restart(self, pod: Pod, c: ContainerState, b: _Backoff) -> None:
        spec = pod.spec
        if await self.manager.restart_container(spec.namespace, spec.name, spec.uid, c.name):
            b.attempt = c.attempt + 1
            b.delay = BACKOFF_INITIAL if b.delay == 0 else min(b.delay * 2, BACKOFF_MAX)
            log.info("restarted %s/%s container %s", spec.namespace, spec.name, c.name)

    async def _recreate(self, pod: Pod) -> None:
        spec = pod.spec
        if await self.manager.recreate_sandbox(spec.namespace, spec.name, spec.uid):
            log.info("made the sandbox of %s/%s again", spec.namespace, spec.name)

    def backoff(self) -> Mapping[tuple[str, str], float]:
        """Each container's current back-off delay (for tests and metrics)."""
        return {k: b.delay for k, b in self._backoff.items()}
