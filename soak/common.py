"""Helpers for soak and fuzz runs against a live ``streamsrv serve``.

Everything here is blocking and thread-safe enough to be called from ``asyncio.to_thread``:

* :class:`LiveServer` starts ``python -m streamsrv serve`` as a subprocess (the way the tests'
  ``Server`` and a user do), reads its URL, bearer token and CA, creates pods with
  ``streamsrv pod run -f``, and reads the server's state: open file descriptors and child
  processes (``/proc``), RSS (``VmRSS``), and the gauges of ``/metrics``.
* :class:`Sampler` polls RSS (and, less often, ``/metrics`` and ``/healthz``) in a thread
  during a run, keeping peaks and the worst health-check latency.
* :func:`free_port`, :func:`parse_metrics`, :func:`pod_manifest`: small pieces the above use.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

LISTENING = re.compile(r"listening on (https?)://([^\s:]+|\[[^\]]+\]):(\d+)")
MIB = 1024 * 1024


def free_port(exclude: set[int] | None = None) -> int:
    """A loopback port nothing listens on, below the kernel's ephemeral range.

    A port that ``bind(0)`` hands out can be given to some client connection's local end
    before a service binds it (the process runtime's pods listen on this host's loopback).
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(10000, max(low, 10001))
        if exclude and port in exclude:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port below the ephemeral range")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> ``{"name{labels}": value}`` (comments dropped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[name] = float(value)
    return out


def pod_manifest(name: str, containers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "streamsrv-soak"}},
        "spec": {"containers": containers},
    }


def read_rss_kib(pid: int) -> int:
    """``VmRSS`` of ``pid`` in KiB (0 if the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def count_fds(pid: int) -> int:
    """Open file descriptors of ``pid`` (-1 if the process is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def fd_kinds(pid: int) -> Counter[str]:
    """What the open fds of ``pid`` are: ``socket``, ``pipe``, ``anon_inode:[eventpoll]``, or a
    path (a ``/dev/pts/N (deleted)`` is a terminal whose other side is gone)."""
    kinds: Counter[str] = Counter()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                kinds[re.sub(r"^(socket|pipe):\[\d+\]$", r"\1", target)] += 1
    return kinds


def descendants(pid: int) -> list[tuple[int, str]]:
    """Every live process below ``pid``: (pid, command line)."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{entry}/stat").read_bytes()
            fields = stat[stat.rindex(b")") + 2 :].split()
            if fields[0] == b"Z":  # a zombie is no live process (its parent reaps it)
                continue
            parents[int(entry)] = int(fields[1])
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            commands[int(entry)] = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    found = []
    for child in parents:
        up = parents.get(child, 0)
        while up > 1 and up != pid:
            up = parents.get(up, 0)
        if up == pid:
            found.append((child, commands.get(child, "")))
    return sorted(found)


@dataclass
class Snapshot:
    """What the server holds at one moment."""

    fds: int
    rss_kib: int
    tasks: int
    connections: int
    children: int

    def as_dict(self) -> dict[str, int]:
        return {
            "fds": self.fds,
            "rss_kib": self.rss_kib,
            "tasks": self.tasks,
            "connections": self.connections,
            "children": self.children,
        }


class LiveServer:
    """``streamsrv serve`` in a subprocess, with ways to look at it from outside.

    Args:
        state_dir: the server's ``--state-dir`` (CA, kubeconfig, process pods, the log).
        runtime: ``process`` (local processes, no Docker) or ``docker``.
        extra: more ``serve`` arguments (limits, ``--pause-image``...).
    """

    def __init__(
        self,
        state_dir: Path,
        runtime: str = "process",
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        launcher: list[str] | None = None,
    ) -> None:
        self.state_dir = state_dir
        #: How to run the CLI (e.g. a wrapper module that adds debugging hooks).
        self.launcher = launcher or [sys.executable, "-m", "streamsrv"]
        self.runtime = runtime
        self.extra = extra or []
        self.env = env
        self.log = state_dir / "server.log"
        self.kubeconfig = state_dir / "kubeconfig"
        self.proc: subprocess.Popen[bytes] | None = None
        self.host = ""
        self.port = 0
        self.url = ""
        self.token = ""
        self._ssl: ssl.SSLContext | None = None

    # ------------------------------------------------------------------ life cycle

    def start(self, timeout: float = 60) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.kubeconfig.exists():
            self.kubeconfig.unlink()
        cmd = [*self.launcher, "--state-dir", str(self.state_dir), "serve",
               "--listen", "127.0.0.1:0", "--runtime", self.runtime, *self.extra]  # fmt: skip
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as logf:
            self.proc = subprocess.Popen(
                cmd, stdout=logf, stderr=subprocess.STDOUT, env=self.env, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log_tail()}")
            m = LISTENING.search(self.log.read_text(errors="replace")[offset:])
            if m and self.kubeconfig.exists():
                self.host = m.group(2).strip("[]")
                self.port = int(m.group(3))
                self.url = f"{m.group(1)}://{m.group(2)}:{m.group(3)}"
                doc = yaml.safe_load(self.kubeconfig.read_text())
                self.token = str(doc["users"][0]["user"]["token"])
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not start within {timeout} s: {self.log_tail()}")

    def stop(self, grace: float = 15) -> int | None:
        """SIGTERM, then SIGKILL after ``grace``; the exit code (None if never started)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def __enter__(self) -> LiveServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]

    # ------------------------------------------------------------------ TLS and HTTP

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "ca.crt"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the server's CA (and checks its name)."""
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        return self._ssl

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        timeout: float = 10,
    ) -> tuple[int, bytes]:
        """One HTTPS request on a fresh connection (``Connection: close``): status, body."""
        conn = http.client.HTTPSConnection(
            self.host, self.port, context=self.ssl_context(), timeout=timeout
        )
        try:
            headers = {
                "Authorization": f"Bearer {self.token if token is None else token}",
                "Connection": "close",
            }
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def healthz(self, timeout: float = 10) -> bool:
        try:
            status, body = self.request("GET", "/healthz", timeout=timeout)
        except (OSError, http.client.HTTPException):
            return False
        return status == 200 and body.strip() == b"ok"

    def metrics(self, timeout: float = 10) -> dict[str, float]:
        """``/metrics`` (the bearer token is always sent), parsed."""
        status, body = self.request("GET", "/metrics", timeout=timeout)
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}: {body[:200]!r}")
        return parse_metrics(body.decode())

    # ------------------------------------------------------------------ pods

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [*self.launcher, "--state-dir", str(self.state_dir), *args]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=self.env, check=False
        )

    def run_pod(self, manifest: dict[str, Any], timeout: float = 120) -> None:
        """``streamsrv pod run -f`` and wait until the pod is Running."""
        name = manifest["metadata"]["name"]
        path = self.state_dir / f"pod-{name}.yaml"
        path.write_text(yaml.safe_dump(manifest))
        r = self.cli("pod", "run", "-f", str(path), timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"pod run failed: {r.stdout}{r.stderr}")
        deadline = time.monotonic() + timeout
        phase = ""
        while time.monotonic() < deadline:
            status, body = self.request("GET", f"/api/v1/namespaces/default/pods/{name}")
            if status == 200:
                phase = json.loads(body)["status"]["phase"]
                if phase == "Running":
                    return
                if phase in ("Succeeded", "Failed"):
                    break
            time.sleep(0.1)
        raise RuntimeError(f"pod {name} is not running (phase {phase!r})")

    # ------------------------------------------------------------------ state

    def snapshot(self) -> Snapshot:
        """fds, RSS, child processes and the task and connection gauges, now."""
        # fds first, the least of three readings: the previous request's socket may still be
        # closing on the server's side for a moment.
        fds = []
        for i in range(3):
            if i:
                time.sleep(0.1)
            fds.append(count_fds(self.pid))
        gauges = self.metrics()
        return Snapshot(
            fds=min(fds),
            rss_kib=read_rss_kib(self.pid),
            tasks=int(gauges.get("streamsrv_tasks", -1)),
            connections=int(gauges.get("streamsrv_connections", -1)),
            children=len(descendants(self.pid)),
        )


def timestamped(line: str) -> None:
    """A progress line of a soak mode, with the time of day."""
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def conclude(
    result: dict[str, Any], lines: list[str], rows: list[str], ok: bool, *, as_json: bool
) -> int:
    """A soak mode's ending: its report, the result as JSON when asked, its docs/reliability.md
    rows, PASS or FAIL; the exit status."""
    print()
    for line in lines:
        print(line)
    if as_json:
        print(json.dumps(result, indent=2))
    for line in rows:
        print(line)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def cpu_seconds(pid: int, *, waited_children: bool = False) -> float:
    """User + system CPU time ``pid`` has used (0.0 if it is gone); with ``waited_children``
    also that of the children it has waited for (a shim and the commands it ran)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(b")") + 2 :].split()
    return sum(int(f) for f in fields[11 : 15 if waited_children else 13]) / os.sysconf(
        "SC_CLK_TCK"
    )


def diagnose(pid: int, limit: float = 30) -> str:
    """What a process that does not answer is doing: its kernel wait and system call (the
    first argument of a ``read`` is the fd), and every thread's Python stack when py-spy is
    installed beside this interpreter."""
    out = []
    for name in ("wchan", "syscall"):
        with contextlib.suppress(OSError):
            out.append(f"/proc/{pid}/{name}: {Path(f'/proc/{pid}/{name}').read_text().strip()}")
    spy = Path(sys.executable).with_name("py-spy")
    if spy.exists():
        try:
            r = subprocess.run(
                [str(spy), "dump", "--pid", str(pid)],
                capture_output=True,
                text=True,
                timeout=limit,
                check=False,
            )
            out.append(r.stdout + r.stderr)
        except (OSError, subprocess.TimeoutExpired) as exc:
            out.append(f"py-spy failed: {exc}")
    return "\n".join(out)


@dataclass
class Sampler:
    """Polls a live server from a thread: RSS and fds every ``interval`` seconds, and every
    ``slow_interval`` seconds ``/healthz`` (its latency), ``/metrics`` (tasks, connections) on
    fresh connections and the server's CPU time.

    The server counts as **hung** once no health check has succeeded for ``hang_after``
    seconds (each check waits ``health_timeout``); then :attr:`hung` is set and
    :attr:`diagnosis` tells what the process was doing.
    """

    server: LiveServer
    interval: float = 0.5
    slow_interval: float = 2.0
    health_timeout: float = 30.0
    hang_after: float = 60.0
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    cpu_samples: list[tuple[float, float]] = field(default_factory=list)
    peak_rss_kib: int = 0
    peak_fds: int = 0
    peak_tasks: int = 0
    peak_connections: int = 0
    health_failures: int = 0
    health_checks: int = 0
    worst_health_latency: float = 0.0
    server_died: bool = False
    hung: threading.Event = field(default_factory=threading.Event)
    hung_after_seconds: float = 0.0
    diagnosis: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _started: float = 0.0
    _last_ok: float = 0.0

    def start(self) -> None:
        self._started = self._last_ok = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    @property
    def busiest_cpu_percent(self) -> float:
        """The server's highest CPU use over one slow interval (100 = one core)."""
        best = 0.0
        for (t0, c0), (t1, c1) in zip(self.cpu_samples, self.cpu_samples[1:], strict=False):
            if t1 > t0:
                best = max(best, 100 * (c1 - c0) / (t1 - t0))
        return round(best, 1)

    def _run(self) -> None:
        next_slow = self._started
        while not self._stop.is_set():
            now = time.monotonic()
            if not self.server.alive():
                self.server_died = True
                return
            rss = read_rss_kib(self.server.pid)
            self.rss_samples.append((now - self._started, rss))
            self.peak_rss_kib = max(self.peak_rss_kib, rss)
            self.peak_fds = max(self.peak_fds, count_fds(self.server.pid))
            if now >= next_slow:
                next_slow = now + self.slow_interval
                self.cpu_samples.append((now, cpu_seconds(self.server.pid)))
                self._slow_checks()
            self._stop.wait(self.interval)

    def _slow_checks(self) -> None:
        t0 = time.monotonic()
        ok = self.server.healthz(timeout=self.health_timeout)
        now = time.monotonic()
        self.health_checks += 1
        self.worst_health_latency = max(self.worst_health_latency, now - t0)
        if not ok:
            self.health_failures += 1
            if now - self._last_ok > self.hang_after and not self.hung.is_set():
                self.hung_after_seconds = round(self._last_ok - self._started, 1)
                self.diagnosis = diagnose(self.server.pid)
                self.hung.set()
            return
        self._last_ok = now
        with contextlib.suppress(Exception):
            gauges = self.server.metrics(timeout=self.health_timeout)
            self.peak_tasks = max(self.peak_tasks, int(gauges.get("streamsrv_tasks", 0)))
            self.peak_connections = max(
                self.peak_connections, int(gauges.get("streamsrv_connections", 0))
            )


def row(run: str, load: str, faults: str, lost: str, bounds: str, ok: bool) -> str:
    """One line of docs/reliability.md's table, as ``soak.run`` collects it (``ROW | ...``)."""
    cells = [run, load, faults, lost, bounds, "ok" if ok else "FAILED"]
    return "ROW | " + " | ".join(c.replace("|", "/") for c in cells) + " |"


__all__ = [
    "MIB",
    "LiveServer",
    "Sampler",
    "Snapshot",
    "count_fds",
    "conclude",
    "cpu_seconds",
    "diagnose",
    "descendants",
    "fd_kinds",
    "free_port",
    "parse_metrics",
    "pod_manifest",
    "read_rss_kib",
    "timestamped",
    "row",
]
