"""Client faults at random moments: real kubectl clients killed with SIGKILL mid-session.

``python -m soak.kills [--clients 1000] [--parallel 16] [--runtime process|docker]``

Four kinds of client, in turn, across kubectl 1.27-1.33: an exec whose command floods stdout
(``yes``), an exec that sleeps, an attach to a container that prints, and a port-forward in
the middle of a download. Each is killed with SIGKILL after a random 0.3-2.5 s. Afterwards no
process of any of them may be left in the pod (each command line carries a marker, looked for
in the host's ``/proc``: both runtimes' pod processes are visible there), and the server's fds,
tasks and RSS must come back to their baseline.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from soak.common import MIB, LiveServer, Sampler, Snapshot, free_port, pod_manifest, row

VERSIONS = ("1.27", "1.28", "1.29", "1.30", "1.31", "1.32", "1.33")
KINDS = ("exec-output", "exec-sleep", "attach", "port-forward")
FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) -> \d+")
ENGINE_POOL = 10  # connections the Docker SDK keeps to the engine (its max_pool_size)


def kubectl_path(version: str) -> str:
    found = shutil.which("kubectl")
    if not found:
        raise SystemExit("kubectl not found on PATH")
    for base in (Path(os.path.realpath(found)).parent, Path(found).parent):
        if (base / f"kubectl.{version}").exists():
            return str(base / f"kubectl.{version}")
    raise SystemExit(f"kubectl.{version} not found beside kubectl")


def marked(marker: str) -> list[int]:
    """Host processes whose command line holds ``marker`` (either runtime's pod processes)."""
    found = []
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                stat = Path(f"/proc/{entry}/stat").read_bytes()
                if stat[stat.rindex(b")") + 2 :].split()[0] != b"Z":
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


class Run:
    def __init__(
        self, server: LiveServer, pod: str, port: int, marker: str, seed: int, sleep_base: int
    ) -> None:
        self.server, self.pod, self.port, self.marker = server, pod, port, marker
        self.sleep_base = sleep_base
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.results: dict[str, int] = {}
        self.bytes_seen = 0
        self.cache = Path(tempfile.mkdtemp(prefix="soak-kc-"))

    def base(self, version: str) -> list[str]:
        return [kubectl_path(version), "--kubeconfig", str(self.server.kubeconfig),
                "--cache-dir", str(self.cache / version)]  # fmt: skip

    def one(self, i: int) -> None:
        kind, version = KINDS[i % len(KINDS)], VERSIONS[(i // len(KINDS)) % len(VERSIONS)]
        with self.lock:
            delay = self.rng.uniform(0.3, 2.5)
        tag = f"{self.marker}{i:05d}"
        base = self.base(version)
        if kind == "exec-output":
            cmd = [*base, "exec", self.pod, "-c", "main", "--", "yes", tag]
        elif kind == "exec-sleep":
            cmd = [
                *base,
                "exec",
                self.pod,
                "-c",
                "main",
                "--",
                "sleep",
                f"{self.sleep_base + i % 1000}",
            ]
        elif kind == "attach":
            cmd = [*base, "attach", self.pod, "-c", "ticker"]
        else:
            cmd = [*base, "port-forward", f"pod/{self.pod}", f":{self.port}"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        got = 0
        try:
            assert proc.stdout is not None
            if kind == "port-forward":
                got = self._download(proc, delay)
            else:
                deadline = time.monotonic() + delay
                os.set_blocking(proc.stdout.fileno(), False)
                while time.monotonic() < deadline:
                    try:
                        chunk = os.read(proc.stdout.fileno(), 1 << 16)
                    except BlockingIOError:
                        time.sleep(0.02)
                        continue
                    if not chunk:
                        break
                    got += len(chunk)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        with self.lock:
            self.results[kind] = self.results.get(kind, 0) + 1
            self.bytes_seen += got

    def _download(self, proc: subprocess.Popen[bytes], delay: float) -> int:
        """Wait for the forward, download from the pod's port until killed mid-transfer."""
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        line = b""
        os.set_blocking(proc.stdout.fileno(), False)
        while not (m := FORWARDING.search(line.decode(errors="replace"))):
            if time.monotonic() > deadline or proc.poll() is not None:
                return 0
            try:
                line += os.read(proc.stdout.fileno(), 4096) or b""
            except BlockingIOError:
                time.sleep(0.05)
        got = 0
        end = time.monotonic() + delay
        try:
            with socket.create_connection(("127.0.0.1", int(m.group(1))), timeout=5) as s:
                s.settimeout(0.5)
                while time.monotonic() < end:
                    try:
                        chunk = s.recv(1 << 16)
                    except TimeoutError:
                        continue
                    if not chunk:
                        break
                    got += len(chunk)
        except OSError:
            pass
        return got


def manifest(name: str, port: int, runtime: str, image: str) -> dict[str, Any]:
    feeder = f"exec busybox nc -ll -p {port} -e busybox cat /dev/zero"
    return pod_manifest(
        name,
        [
            {"name": "main", "image": image, "command": ["sleep", "100000"]},
            {
                "name": "ticker",
                "image": image,
                "command": ["sh", "-c", "while true; do echo tick; sleep 0.1; done"],
            },
            {"name": "feeder", "image": image, "command": ["sh", "-c", feeder]},
        ],  # fmt: skip
    )


def run(
    clients: int = 1000,
    parallel: int = 16,
    runtime: str = "process",
    seed: int = 1,
    settle: float = 60.0,
    state_dir: Path | None = None,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    """``extra``: more `streamsrv serve` flags (the containerd runtime's address and namespace)."""
    image = os.environ.get("STREAMSRV_TEST_BUSYBOX_IMAGE", "streamsrv/busybox:local")
    pause = os.environ.get("STREAMSRV_TEST_PAUSE_IMAGE", "streamsrv/pause:local")
    own_dir = state_dir is None
    state = state_dir or Path(tempfile.mkdtemp(prefix="soak-kills-"))
    server = LiveServer(state / "state", runtime, extra=["--pause-image", pause, *(extra or [])])
    server.start()
    # Unique per run (not per seed): another run's leftovers must never count as this one's.
    marker = f"k{int.from_bytes(os.urandom(4), 'big')}x"
    sleep_base = 900000 + random.Random(marker).randrange(0, 90) * 1000
    port = free_port()
    try:
        server.run_pod(manifest("kills", port, runtime, image))
        # A warm-up round, not counted: the engine client's connection pool and threads grow
        # to the concurrency used, and stay (bounded) - that is no leak.
        warm = Run(server, "kills", port, marker + "w", seed, sleep_base)
        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            for f in [pool.submit(warm.one, i) for i in range(2 * parallel)]:
                f.result()
        time.sleep(3)
        base = server.snapshot()
        sampler = Sampler(server)
        sampler.start()
        began = time.monotonic()
        work = Run(server, "kills", port, marker, seed, sleep_base)
        # In two halves, the server settled after each: a leak grows from one half to the
        # next, where a pool (the engine client's keeps up to 10 connections) only fills.
        mid = base
        for part in (range(clients // 2), range(clients // 2, clients)):
            if part.start:
                time.sleep(3)
                mid = server.snapshot()
            with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
                for f in [pool.submit(work.one, i) for i in part]:
                    f.result()
        took = time.monotonic() - began
        deadline = time.monotonic() + settle
        pool_fds = ENGINE_POOL if runtime == "docker" else 0

        def settled(now: Snapshot) -> bool:
            return (
                now.fds <= mid.fds + 2
                and now.fds <= base.fds + 2 + pool_fds
                and now.tasks <= base.tasks + 2
            )

        def leftovers() -> list[int]:
            # exec-sleep's commands are "sleep <sleep_base + i>": their first digits
            sleepers = marked(f"sleep {str(sleep_base)[:3]}")
            return marked(marker) + sleepers

        while (left := leftovers()) and time.monotonic() < deadline:
            time.sleep(0.5)
        left_cmds = [
            Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            for p in left
            if Path(f"/proc/{p}/cmdline").exists()
        ]
        after = base
        while time.monotonic() < deadline:
            after = server.snapshot()
            if settled(after):
                break
            time.sleep(1)
        sampler.stop()
        alive = server.alive() and server.healthz()
        shutil.rmtree(work.cache, ignore_errors=True)
        server.cli("pod", "rm", "kills")  # an engine's pods outlive the server
    finally:
        server.stop()
        if own_dir:
            shutil.rmtree(state, ignore_errors=True)
    out = {
        "clients": clients,
        "by_kind": work.results,
        "runtime": runtime,
        "seconds": round(took, 1),
        "bytes_through_before_kill": work.bytes_seen,
        "left_in_pod": len(left),
        "left": left_cmds,
        "server_alive": alive,
        "fds": [base.fds, mid.fds, after.fds],
        "tasks": [base.tasks, after.tasks],
        "rss_mib": [base.rss_kib // 1024, after.rss_kib // 1024, sampler.peak_rss_kib // 1024],
        "health_failures": sampler.health_failures,
    }
    out["ok"] = bool(
        alive and out["left_in_pod"] == 0 and settled(after) and sampler.health_failures == 0
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--parallel", type=int, default=16)
    ap.add_argument("--runtime", default="process", choices=("process", "docker"))
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    out = run(args.clients, args.parallel, args.runtime, args.seed)
    print(json.dumps(out))
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(out["by_kind"].items()))
    print(
        row(
            f"kubectl killed at random moments ({args.runtime})",
            f"{out['clients']} kubectl 1.27-1.33 clients, {args.parallel} at a time ({kinds}); "
            f"{out['bytes_through_before_kill'] // MIB} MiB moved",
            "SIGKILL after 0.3-2.5 s",
            f"processes left in the pod: {out['left_in_pod']}",
            f"fds {out['fds'][0]} -> {out['fds'][1]} (half-way) -> {out['fds'][2]}, tasks "
            f"{out['tasks'][0]} -> "
            f"{out['tasks'][1]}, RSS {out['rss_mib'][0]} -> {out['rss_mib'][1]} MiB (peak "
            f"{out['rss_mib'][2]})",
            bool(out["ok"]),
        )
    )
    sys.exit(0 if out["ok"] else 1)


if __name__ == "__main__":
    main()
