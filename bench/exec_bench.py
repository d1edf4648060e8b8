"""Throughput, latency, concurrency and memory, each next to a baseline measured in the same run.

Run through `scripts/bench` (which starts a private engine and builds the images). Rows (issue 7):
  1. exec stdout 1 GiB (`dd bs=64k`) through kubectl 1.27 (SPDY), kubectl 1.33 (WebSocket) and
     the Python client, against the same command through `docker exec` (the raw backend stream);
  2. exec stdin 512 MiB into `dd of=/dev/null bs=64k`: same clients, same baseline;
  3. port-forward 512 MiB each way through kubectl 1.27 (SPDY) and 1.33 (tunnel), against the
     same client and server programs over plain loopback TCP;
  4. `exec POD -- true` start-to-exit latency, p50 and p95, against `docker exec CONTAINER true`;
  5. 1000 concurrent idle interactive shells: all alive, server RSS, RSS per session;
  6. 1000 execs by 10 workers (kubectl 1.33): successes and total time, next to docker exec;
  7. time from the process's exit to kubectl's exit, next to docker exec;
  8. the Python clients: exec stdout 1 GiB and stdin 512 MiB through `streamsrv.client`
     (`python -m streamsrv.client exec`, which writes the output to its stdout as kubectl does),
     kubectl 1.33 and the official `kubernetes` client (64 MiB of stdout: it is that slow), all
     over WebSocket v5 to the same server and pod, with each one's CPU seconds per GiB;
  9. pod create and delete (pause + one container) with a CNI network (bridge + host-local +
     loopback, the plugins in a network namespace of the bench's own), against the same pods
     without CNI, alternating, BENCH_PODS of each (the runtime called in-process);
 10. CRI side by side: a private containerd 1.6 (its CRI plugin's stream server is the kubelet's
     Go streaming library; scripts/lib.sh containerd_start), `streamsrv cri --runtime containerd`
     on that same containerd (its own namespace) and `streamsrv cri --runtime docker`, each
     behind its own `streamsrv serve --cri-endpoint` gateway with the same pod: exec stdout
     256 MiB, exec stdin 128 MiB, port-forward 128 MiB each way (to the client, then to the pod,
     which answers once it has read it all) and `exec -- true` p50 (10 runs), kubectl 1.27 and
     1.33, the two nodes in turn (A B A B); and the CRI calls alone:
     ListPodSandbox and ListContainers for the pod at once, BENCH_CRI_CALLS pairs per run, p50
     and the node process's CPU per pair. It touches no pod but its own (rows 1-9 clear the
     engine: scripts/bench gives them a private one).
Medians of RUNS runs with min-max. Ratios are ours / baseline for throughput (higher is better)
and baseline / ours for times. Figures only: nothing here asserts a time.

BENCH_ROWS=1,2,... picks rows; BENCH_RUNS, BENCH_LATENCY_RUNS, BENCH_SHELLS, BENCH_EXECS scale.
BENCH_IDLE_CONTAINERD=N runs row 5 again with N shells on the containerd runtime (a private
containerd, as the tests start it), spread over one container of the pod per 300 shells.
Row 10: BENCH_CRI_STDOUT_MIB, BENCH_CRI_STDIN_MIB, BENCH_CRI_PF_MIB, BENCH_CRI_LATENCY_RUNS;
BENCH_CRI_HOPS: what the gateways speak to the nodes' stream servers: `https` (the default:
both sides https, containerd with enable_tls_streaming and a certificate the bench makes, ours
with its own CA), `http` (both plain) or `mixed` (containerd plain, ours https: the defaults of
each). BENCH_CRI_PARTS=stdout,stdin,portforward,latency,calls picks measurements; BENCH_CRI_DOCKER=0
leaves the Docker node out. BENCH_CRI_PLAIN_HTTP=1 is an older name of BENCH_CRI_HOPS=http.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soak.common import cpu_seconds as soak_cpu_seconds  # noqa: E402
from soak.common import read_rss_kib as rss_kib  # noqa: E402
from streamsrv.podmanager import PodManager  # noqa: E402
from streamsrv.pods import parse_pod  # noqa: E402
from streamsrv.runtime.cni import CniNetwork  # noqa: E402
from streamsrv.runtime.docker import DockerRuntime  # noqa: E402
from tests.cni_env import CNI_BIN, pod_network  # noqa: E402
from tests.conftest import (  # noqa: E402
    BUSYBOX,
    PAUSE,
    Server,
    _remove_everything,
    free_port,
    kubectl_path,
    metric,
    pod_manifest,
    proc_table,
    sleeper,
    unique,
    wait_forwarding,
)

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
LATENCY_RUNS = int(os.environ.get("BENCH_LATENCY_RUNS", "50"))
SHELLS = int(os.environ.get("BENCH_SHELLS", "1000"))
# Row 5 again on the containerd runtime, with this many shells (0: not run).
IDLE_CONTAINERD = int(os.environ.get("BENCH_IDLE_CONTAINERD", "0"))
EXECS = int(os.environ.get("BENCH_EXECS", "1000"))
ROWS = {int(r) for r in os.environ.get("BENCH_ROWS", "1,2,3,4,5,6,7,8,9").split(",")}
PODS = int(os.environ.get("BENCH_PODS", "15"))
OUT_SIZE = 1 << 30
IN_SIZE = 512 << 20
PF_SIZE = 512 << 20
PY_SIZE = 64 << 20
DD_OUT = f"dd if=/dev/zero bs=65536 count={OUT_SIZE // 65536} 2>/dev/null"
DD_IN = "dd of=/dev/null bs=65536 2>/dev/null"
#: Row 10's stdin consumer. containerd 1.6's stream server ends an exec's stdin as soon as the
#: process's stdout or stderr ends (`ExecIO.Attach`: the copy of either output, once done, closes
#: the client's stdin stream), and busybox dd moves its `of=` file onto fd 1, so dd alone ends
#: stdout at once (seen 2026-12-03 with containerd's debug log: "Finish piping stdout" 30-50 ms
#: after the exec started, then "stdin closed", and the process got a few blocks or none). The
#: shell stays (dd is not its last command, so it does not exec it) and holds both outputs open
#: until dd has read to the end; dd's record counts go to stderr, which `timed` adds to the
#: report. docs/benchmarks.md, 2026-12-03 (evening).
DD_IN_OPEN = ["sh", "-c", "dd of=/dev/null bs=65536; exit $?"]


def dd_read_all(report: bytes, size: int) -> bool:
    """Whether dd's ``F+P records in`` (F full blocks of 64 KiB, P partial ones) can be
    ``size`` bytes: at least one byte a partial block, at most a whole one."""
    match = re.search(rb"(\d+)\+(\d+) records in", report)
    if match is None:
        return False
    full, partial = int(match.group(1)), int(match.group(2))
    return full * 65536 + partial <= size <= (full + partial) * 65536


DOWN, UP = 7100, 7101
PYCLIENT = Path(__file__).with_name("pyclient.py")


async def pod_network_times(directory: Path, count: int) -> dict[str, list[float]]:
    """Seconds to create and to delete ``count`` pods with CNI and ``count`` without, in turn."""
    times: dict[str, list[float]] = {}
    with pod_network(directory) as net:
        cni = DockerRuntime(
            pause_image=PAUSE,
            network=CniNetwork(
                directory / "state", conf_dir=net.conf_dir, bin_dirs=[CNI_BIN],
                plugin_netns=net.netns,
            ),
        )  # fmt: skip
        plain = DockerRuntime(pause_image=PAUSE)
        try:
            for _ in range(count):
                for label, runtime in (("cni", cni), ("plain", plain)):
                    manager = PodManager(runtime)
                    spec = parse_pod(pod_manifest(unique("net"), sleeper()))
                    t0 = time.perf_counter()
                    await manager.create(spec)
                    t1 = time.perf_counter()
                    await manager.delete("default", spec.name, grace=0)
                    t2 = time.perf_counter()
                    times.setdefault(f"{label} create", []).append(t1 - t0)
                    times.setdefault(f"{label} delete", []).append(t2 - t1)
            assert net.leases() == [], net.leases()
        finally:
            await cni.close()
            await plain.close()
    return times


def timed(
    cmd: list[str], stdin_path: Path | None = None, tail: bytearray | None = None
) -> tuple[float, int]:
    """Seconds to run ``cmd`` and the bytes it wrote to stdout (read as fast as possible);
    ``tail`` gets the last 4 KiB of that stdout, then what it wrote to stderr."""
    stdin = stdin_path.open("rb") if stdin_path else subprocess.DEVNULL
    try:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        total = 0
        while chunk := proc.stdout.read1(1 << 20):  # type: ignore[attr-defined]
            total += len(chunk)
            if tail is not None:
                tail += chunk
                del tail[:-4096]
        code = proc.wait()
        elapsed = time.perf_counter() - start
    finally:
        if stdin_path:
            stdin.close()  # type: ignore[union-attr]
    assert proc.stderr is not None
    err_bytes = proc.stderr.read()
    if tail is not None:
        tail += err_bytes
    err = err_bytes.decode(errors="replace")
    assert code == 0, f"{cmd[:3]}... exited {code}: {err[-500:]}"
    return elapsed, total


def summary(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def rate_text(values: list[float]) -> str:
    med, lo, hi = summary(values)
    return f"{med / 1e6:.0f} MB/s ({lo / 1e6:.0f}-{hi / 1e6:.0f})"


def us_text(values: list[float]) -> str:
    med, lo, hi = summary(values)
    return f"{med * 1e6:.0f} us ({lo * 1e6:.0f}-{hi * 1e6:.0f})"


def ms_text(values: list[float]) -> str:
    med, lo, hi = summary(values)
    return f"{med * 1000:.0f} ms ({lo * 1000:.0f}-{hi * 1000:.0f})"


# ------------------------------------------------------------------------- CPU by process

ENGINE = ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2")
cpu_seconds = partial(soak_cpu_seconds, waited_children=True)


def engine_pids() -> list[int]:
    """dockerd, containerd and the shims (whose reaped children are the exec'd commands)."""
    return [
        pid
        for pid, (_, args) in proc_table().items()
        if args and Path(args.split()[0]).name in ENGINE
    ]


def children_cpu() -> float:
    """CPU of this process's children that have been waited for (a finished client)."""
    t = os.times()
    return t.children_user + t.children_system


def own_cpu() -> float:
    """CPU of this process (the benchmark's own socket client)."""
    t = os.times()
    return t.user + t.system


class CpuMeter:
    """CPU seconds each part spent during one measured run (parts give cumulative seconds)."""

    def __init__(self, parts: dict[str, Callable[[], float]]) -> None:
        self.parts = parts
        self.spent: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self._start = {name: read() for name, read in self.parts.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.spent = {name: read() - self._start[name] for name, read in self.parts.items()}


def measured_runs(
    cmd: list[str], size: int, stdin: Path | None, parts: dict[str, Callable[[], float]]
) -> tuple[list[float], list[dict[str, float]], list[float]]:
    """RUNS runs of ``cmd``: rates, the CPU each part spent, wall seconds. Output is checked
    to be ``size`` bytes (but for bench/pyclient.py, which checks itself)."""
    rates, runs, walls = [], [], []
    for _ in range(RUNS):
        with CpuMeter(parts) as meter:
            seconds, total = timed(cmd, stdin)
        if stdin is None and cmd[1] != str(PYCLIENT):
            assert total == size, f"{cmd[:4]}: {total} bytes, expected {size}"
        rates.append(size / seconds)
        runs.append(meter.spent)
        walls.append(seconds)
    return rates, runs, walls


def cpu_row(what: str, runs: list[dict[str, float]], walls: list[float], size: int) -> str:
    """A Markdown row: median CPU seconds per GiB of each part, their sum, wall seconds per GiB."""
    gib = size / (1 << 30)
    cells = [statistics.median(r[name] for r in runs) / gib for name in runs[0]]
    wall = statistics.median(walls) / gib
    return f"| {what} | " + " | ".join(f"{c:.2f}" for c in [*cells, sum(cells), wall]) + " |"


# ------------------------------------------------------------------------- port-forward clients


def download(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        total = 0
        buf = bytearray(1 << 20)
        while n := s.recv_into(buf):
            total += n
        return total


def upload(port: int, size: int = PF_SIZE) -> None:
    """Send ``size`` bytes, half-close, wait for the server's close (it has read them all)."""
    block = bytes(1 << 16)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        for _ in range(size // len(block)):
            s.sendall(block)
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass


class Bench:
    def __init__(self, tmp: Path, server: Server) -> None:
        self.tmp, self.server = tmp, server
        self.rows: list[str] = []
        self.cpu_rows: list[str] = []
        self.pf_cpu_rows: list[str] = []
        self.client_rows: list[str] = []
        self.cid = subprocess.run(
            ["docker", "ps", "-q", "--no-trunc", "-f", "label=io.kubernetes.container.name=main"],
            capture_output=True, text=True, check=True,
        ).stdout.split()[0]  # fmt: skip

    def kubectl(self, version: str, *args: str) -> list[str]:
        return [kubectl_path(version), "--kubeconfig", str(self.server.kubeconfig),
                "--cache-dir", str(self.tmp / f"kc-{version}"), *args]  # fmt: skip

    def streamsrv_client(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "streamsrv.client", "--kubeconfig",
                str(self.server.kubeconfig), "exec", "-c", "main", *args]  # fmt: skip

    def pyclient(self, *args: str) -> list[str]:
        return [sys.executable, str(PYCLIENT), str(self.server.kubeconfig), *args]

    def row(self, what: str, ours: str, base: str, ratio: float) -> None:
        line = f"| {what} | {ours} | {base} | {ratio:.2f} |"
        print(line, flush=True)
        self.rows.append(line)

    def throughput(
        self, what: str, size: int, base_cmd: list[str], clients: list[tuple[str, list[str]]],
        stdin: Path | None = None,
    ) -> None:  # fmt: skip
        assert self.server.proc is not None
        server_pid = self.server.proc.pid

        def rates(label: str, cmd: list[str]) -> list[float]:
            engine = engine_pids()
            parts = {
                "engine": lambda: sum(cpu_seconds(p) for p in engine),
                "streamsrv": lambda: cpu_seconds(server_pid),
                "client": children_cpu,
            }
            out, runs, walls = measured_runs(cmd, size, stdin, parts)
            self.cpu_rows.append(cpu_row(f"{what}, {label}", runs, walls, size))
            return out

        base = rates("docker exec", base_cmd)
        for label, cmd in clients:
            ours = rates(label, cmd)
            self.row(
                f"{what}, {label}",
                rate_text(ours),
                f"docker exec: {rate_text(base)}",
                statistics.median(ours) / statistics.median(base),
            )

    def row1_stdout(self) -> None:
        cmd = ["sh", "-c", DD_OUT]
        self.throughput(
            "exec stdout 1 GiB",
            OUT_SIZE,
            ["docker", "exec", self.cid, *cmd],
            [
                ("kubectl 1.27 (SPDY)", self.kubectl("1.27", "exec", "bench", "--", *cmd)),
                ("kubectl 1.33 (WebSocket)", self.kubectl("1.33", "exec", "bench", "--", *cmd)),
            ],
        )
        # The Python client reads at a few MB/s whatever the server does: a smaller size.
        dd = f"dd if=/dev/zero bs=65536 count={PY_SIZE // 65536} 2>/dev/null"
        self.throughput(
            "exec stdout 64 MiB",
            PY_SIZE,
            ["docker", "exec", self.cid, "sh", "-c", dd],
            [("Python client 37 (WebSocket v5)", self.pyclient("stdout", str(PY_SIZE), dd))],
        )

    def row2_stdin(self) -> None:
        data = self.tmp / "stdin.bin"
        with data.open("wb") as f:
            f.truncate(IN_SIZE)  # zeros; the page cache serves them
        cmd = ["sh", "-c", DD_IN]
        self.throughput(
            "exec stdin 512 MiB",
            IN_SIZE,
            ["docker", "exec", "-i", self.cid, *cmd],
            [
                ("kubectl 1.27 (SPDY)", self.kubectl("1.27", "exec", "-i", "bench", "--", *cmd)),
                (
                    "kubectl 1.33 (WebSocket)",
                    self.kubectl("1.33", "exec", "-i", "bench", "--", *cmd),
                ),
                ("Python client (WebSocket v5)", self.pyclient("stdin", str(IN_SIZE), DD_IN)),
            ],
            stdin=data,
        )

    def row3_portforward(self) -> None:
        # Baseline: the same busybox nc services on this host's loopback, the same client code.
        down, up = free_port(), free_port()
        services = [
            subprocess.Popen(["busybox", "nc", "-ll", "-p", str(down), "-e", "dd",
                              "if=/dev/zero", "bs=65536", f"count={PF_SIZE // 65536}"],
                             stderr=subprocess.DEVNULL),
            subprocess.Popen(["busybox", "nc", "-ll", "-p", str(up), "-e", "dd",
                              "of=/dev/null", "bs=65536"], stderr=subprocess.DEVNULL),
        ]  # fmt: skip
        try:
            time.sleep(0.5)
            parts = self._pf_parts(None)
            base_down = self._pf_rates("loopback TCP, to client", parts, partial(download, down))
            base_up = self._pf_rates("loopback TCP, to service", parts, partial(upload, up))
        finally:
            for p in services:
                p.kill()
                p.wait()
        for label, version in (("kubectl 1.27 (SPDY)", "1.27"), ("kubectl 1.33 (tunnel)", "1.33")):
            log_path = self.tmp / f"pf-{version}.log"
            log = log_path.open("w")
            proc = subprocess.Popen(
                self.kubectl(version, "port-forward", "bench", f":{DOWN}", f":{UP}"),
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                local = wait_forwarding(proc, log_path, [DOWN, UP])
                parts = self._pf_parts(proc.pid)
                ours_down = self._pf_rates(
                    f"{label}, pod to client", parts, partial(download, local[DOWN])
                )
                ours_up = self._pf_rates(
                    f"{label}, client to pod", parts, partial(upload, local[UP])
                )
            finally:
                proc.terminate()
                proc.wait()
                log.close()
            for way, ours, base in (("pod to client", ours_down, base_down),
                                    ("client to pod", ours_up, base_up)):  # fmt: skip
                self.row(
                    f"port-forward 512 MiB {way}, {label}",
                    rate_text(ours),
                    f"loopback TCP: {rate_text(base)}",
                    statistics.median(ours) / statistics.median(base),
                )

    def _pf_parts(self, kubectl: int | None) -> dict[str, Callable[[], float]]:
        """The server, kubectl and our socket client (the `dd`s behind `nc` are not counted:
        busybox nc does not wait for them, and they are the same programs in both runs)."""
        assert self.server.proc is not None
        server_pid = self.server.proc.pid
        return {
            "streamsrv": lambda: cpu_seconds(server_pid),
            "kubectl": lambda: cpu_seconds(kubectl) if kubectl else 0.0,
            "client": own_cpu,
        }

    def _pf_rates(
        self, what: str, parts: dict[str, Callable[[], float]], fn: Callable[[], int | None]
    ) -> list[float]:
        """Rates of RUNS calls of ``fn``; a download returns its byte count, which is checked."""
        out, runs, walls = [], [], []
        for _ in range(RUNS):
            with CpuMeter(parts) as meter:
                start = time.perf_counter()
                got = fn()
                seconds = time.perf_counter() - start
            if got is not None:
                assert got == PF_SIZE, got
            out.append(PF_SIZE / seconds)
            runs.append(meter.spent)
            walls.append(seconds)
        self.pf_cpu_rows.append(cpu_row(what, runs, walls, PF_SIZE))
        return out

    def row4_latency(self) -> None:
        def latencies(cmd: list[str]) -> list[float]:
            out = []
            for _ in range(LATENCY_RUNS):
                start = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                out.append(time.perf_counter() - start)
            return sorted(out)

        def pct(v: list[float]) -> tuple[float, float]:
            return v[len(v) // 2], v[max(0, int(len(v) * 0.95) - 1)]

        base = pct(latencies(["docker", "exec", self.cid, "true"]))
        for label, version in (
            ("kubectl 1.27 (SPDY)", "1.27"),
            ("kubectl 1.33 (WebSocket)", "1.33"),
        ):
            ours = pct(latencies(self.kubectl(version, "exec", "bench", "--", "true")))
            self.row(
                f"exec start `true`, {label}, p50 / p95",
                f"{ours[0] * 1000:.0f} / {ours[1] * 1000:.0f} ms",
                f"docker exec: {base[0] * 1000:.0f} / {base[1] * 1000:.0f} ms",
                base[0] / ours[0],
            )
        # The floor under those rows: kubectl starting and reading its kubeconfig, with no
        # request to any server, next to the same docker exec figures.
        alone = pct(latencies(self.kubectl("1.33", "version", "--client")))
        self.row(
            "kubectl 1.33 alone, no server (`version --client`), p50 / p95",
            f"{alone[0] * 1000:.0f} / {alone[1] * 1000:.0f} ms",
            f"docker exec: {base[0] * 1000:.0f} / {base[1] * 1000:.0f} ms",
            base[0] / alone[0],
        )

    def row5_idle_shells(self) -> None:
        self.idle_shells(self.server, "Docker runtime", SHELLS)
        if IDLE_CONTAINERD:
            # The same sessions on the containerd runtime, on a server and pod of their own
            # (fewer: containerd's shim stops answering Tasks.Start in time beyond about 500
            # tty execs in one container, docs/benchmarks.md).
            # Beyond that the shells are spread over more containers of the pod, one per
            # IDLE_PER_CONTAINER shells (more shells: less noise from RSS's granularity).
            server = Server(self.tmp / "state-containerd", runtime="containerd")
            server.start()
            try:
                containers = idle_containers(IDLE_CONTAINERD)
                manifest = self.tmp / "idle-pod.yaml"
                manifest.write_text(idle_manifest(containers))
                r = server.cli("pod", "run", "-f", str(manifest))
                assert r.returncode == 0, r.stderr
                self.idle_shells(server, "containerd runtime", IDLE_CONTAINERD, containers)
            finally:
                server.stop()

    def idle_shells(
        self, server: Server, runtime: str, shells: int, containers: Sequence[str] = ("main",)
    ) -> None:
        assert server.proc is not None
        pid = server.proc.pid
        before = rss_kib(pid)
        proc = subprocess.run(
            [sys.executable, str(PYCLIENT), str(server.kubeconfig), "shells", str(shells),
             str(pid), ",".join(containers)],
            capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        alive, peak = (int(x) for x in proc.stdout.split()[-2:])
        grown = peak - before
        self.row(
            f"{shells} concurrent idle `sh -i` (tty), {runtime}",
            f"{alive}/{shells} alive; server RSS {peak / 1024:.0f} MB "
            f"({grown / shells:.0f} KiB per session)",
            f"server RSS before: {before / 1024:.0f} MB",
            before / peak,
        )

    def row6_many_execs(self) -> None:
        def run_all(cmd: list[str]) -> tuple[int, float]:
            def one(_: int) -> bool:
                return subprocess.run(cmd, capture_output=True).returncode == 0

            start = time.perf_counter()
            with ThreadPoolExecutor(10) as pool:
                ok = sum(pool.map(one, range(EXECS)))
            return ok, time.perf_counter() - start

        base_ok, base_t = run_all(["docker", "exec", self.cid, "true"])
        ok, t = run_all(self.kubectl("1.33", "exec", "bench", "--", "true"))
        self.row(
            f"{EXECS} execs of `true` by 10 workers, kubectl 1.33",
            f"{ok}/{EXECS} ok in {t:.1f} s",
            f"docker exec: {base_ok}/{EXECS} ok in {base_t:.1f} s",
            base_t / t,
        )

    def row7_exit_to_exit(self) -> None:
        # busybox `date` has no sub-second format, so the process announces its end instead: it
        # prints a line, sleeps exactly PAUSE s and exits. The gap is (client exit - line seen -
        # PAUSE), which undercounts by the one-way output latency (a millisecond here).
        pause = 0.2
        script = f"echo ready; sleep {pause}"

        def gaps(cmd: list[str]) -> list[float]:
            out = []
            for _ in range(max(RUNS, 10)):
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                assert proc.stdout is not None
                assert proc.stdout.readline() == b"ready\n"
                seen = time.perf_counter()
                proc.stdout.read()
                assert proc.wait() == 0
                out.append(time.perf_counter() - seen - pause)
            return out

        base = gaps(["docker", "exec", self.cid, "sh", "-c", script])
        for label, version in (
            ("kubectl 1.27 (SPDY)", "1.27"),
            ("kubectl 1.33 (WebSocket)", "1.33"),
        ):
            ours = gaps(self.kubectl(version, "exec", "bench", "--", "sh", "-c", script))
            self.row(
                f"process exit to client exit, {label}",
                ms_text(ours),
                f"docker exec: {ms_text(base)}",
                statistics.median(base) / statistics.median(ours),
            )

    def row9_pod_network(self) -> None:
        times = asyncio.run(pod_network_times(self.tmp / "cni", PODS))
        for step in ("create", "delete"):
            with_cni, without = times[f"cni {step}"], times[f"plain {step}"]
            self.row(
                f"pod {step} with CNI (bridge + host-local)",
                ms_text(with_cni),
                f"same pod without CNI: {ms_text(without)}",
                statistics.median(without) / statistics.median(with_cni),
            )

    def row8_python_clients(self) -> None:
        """streamsrv.client against kubectl 1.33 and the kubernetes client, same run."""
        assert self.server.proc is not None
        server_pid = self.server.proc.pid
        data = self.tmp / "stdin.bin"
        with data.open("wb") as f:
            f.truncate(IN_SIZE)
        py_dd = f"dd if=/dev/zero bs=65536 count={PY_SIZE // 65536} 2>/dev/null"

        def measure(cmd: list[str], size: int, stdin: Path | None) -> tuple[float, float, float]:
            """Median rate, client CPU-s per GiB and server CPU-s per GiB over RUNS runs."""
            parts = {"streamsrv": lambda: cpu_seconds(server_pid), "client": children_cpu}
            rates, runs, _ = measured_runs(cmd, size, stdin, parts)
            gib = size / (1 << 30)
            return (statistics.median(rates),
                    statistics.median(r["client"] for r in runs) / gib,
                    statistics.median(r["streamsrv"] for r in runs) / gib)  # fmt: skip

        out_cmd, in_cmd = ["sh", "-c", DD_OUT], ["sh", "-c", DD_IN]
        for what, size, ours_cmd, kubectl_cmd, py_cmd, py_size, stdin in (
            ("exec stdout 1 GiB", OUT_SIZE, self.streamsrv_client("bench", "--", *out_cmd),
             self.kubectl("1.33", "exec", "bench", "--", *out_cmd),
             self.pyclient("stdout", str(PY_SIZE), py_dd), PY_SIZE, None),
            ("exec stdin 512 MiB", IN_SIZE, self.streamsrv_client("-i", "bench", "--", *in_cmd),
             self.kubectl("1.33", "exec", "-i", "bench", "--", *in_cmd),
             self.pyclient("stdin", str(IN_SIZE), DD_IN), IN_SIZE, data),
        ):  # fmt: skip
            ours = measure(ours_cmd, size, stdin)
            kc = measure(kubectl_cmd, size, stdin)
            py = measure(py_cmd, py_size, stdin)
            line = (
                f"| {what} | {ours[0] / 1e6:.0f} MB/s | {kc[0] / 1e6:.0f} MB/s | "
                f"{py[0] / 1e6:.1f} MB/s ({py_size >> 20} MiB) | {ours[0] / kc[0]:.2f} | "
                f"{ours[0] / py[0]:.0f} | {ours[1]:.2f} / {kc[1]:.2f} / {py[1]:.1f} | "
                f"{ours[2]:.2f} / {kc[2]:.2f} / {py[2]:.2f} |"
            )
            print(line, flush=True)
            self.client_rows.append(line)


# ------------------------------------------------------------------------- row 10: CRI side by side

CRI_OUT_SIZE = int(os.environ.get("BENCH_CRI_STDOUT_MIB", "256")) << 20
CRI_IN_SIZE = int(os.environ.get("BENCH_CRI_STDIN_MIB", "128")) << 20
CRI_PF_SIZE = int(os.environ.get("BENCH_CRI_PF_MIB", "128")) << 20
CRI_LATENCY_RUNS = int(os.environ.get("BENCH_CRI_LATENCY_RUNS", "10"))
CRI_CALLS = int(os.environ.get("BENCH_CRI_CALLS", "2000"))
CRI_VERSIONS = ("1.27", "1.33")
#: What the gateways speak to each node's stream server (module docstring).
CRI_HOPS = os.environ.get("BENCH_CRI_HOPS") or (
    "http" if os.environ.get("BENCH_CRI_PLAIN_HTTP") == "1" else "https"  # its older name
)
assert CRI_HOPS in ("https", "http", "mixed"), f"BENCH_CRI_HOPS={CRI_HOPS}: https, http or mixed"
#: Stream URLs of `streamsrv cri` over plain http (by default https, with its CA).
CRI_PLAIN_HTTP = CRI_HOPS == "http"
#: containerd's stream server over https (by default plain http).
CRI_GO_TLS = CRI_HOPS == "https"
CRI_PARTS = set(
    os.environ.get("BENCH_CRI_PARTS", "stdout,stdin,portforward,latency,calls").split(",")
)
CRI_DOCKER = os.environ.get("BENCH_CRI_DOCKER", "1") != "0"
GO_NAME = "Go stream server (containerd 1.6)"
CTD_NAME = "streamsrv cri (containerd)"
OURS_NAME = "streamsrv cri (docker)"
#: Our nodes, each measured against the Go one: on the same containerd first (same engine, same
#: hops), then on Docker.
OUR_NAMES = (CTD_NAME, OURS_NAME)
CTD_NAMESPACE = "streamsrv-bench"


def cri_manifest(name: str) -> str:
    """The one pod of both nodes: `sleep` to exec into; busybox `nc` serving CRI_PF_SIZE on
    DOWN, and on UP reading exactly CRI_PF_SIZE, then answering `done` (UPLOAD_DONE)."""
    sink = f"dd of=/dev/null bs=65536 count={CRI_PF_SIZE // 65536} iflag=fullblock 2>/dev/null"
    return f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  containers:
  - {{name: main, image: {BUSYBOX}, command: [sleep, "100000"]}}
  - name: down
    image: {BUSYBOX}
    command: [busybox, nc, -ll, -p, "{DOWN}", -e, dd, if=/dev/zero, bs=65536,
              count={CRI_PF_SIZE // 65536}]
  - name: up
    image: {BUSYBOX}
    command: [busybox, nc, -ll, -p, "{UP}", -e, sh, -c, "{sink}; echo done"]
"""


def docker_engine_pids(container_ids: Collection[str]) -> list[int]:
    """The engine under `streamsrv cri --runtime docker`: the dockerd of DOCKER_HOST, the
    containerd it started and the shims of the given containers (each `-id ID`)."""
    host = os.environ.get("DOCKER_HOST", "").removeprefix("unix://")
    table = proc_table()

    def named(args: str, *names: str) -> bool:
        return bool(args) and Path(args.split()[0]).name in names

    dockerd = {pid for pid, (_, args) in table.items() if named(args, "dockerd") and host in args}
    under = {pid for pid, (ppid, args) in table.items() if ppid in dockerd and named(args, *ENGINE)}
    shims = {
        pid
        for pid, (_, args) in table.items()
        if named(args, "containerd-shim", "containerd-shim-runc-v2")
        and any(f" -id {cid} " in f" {args} " for cid in container_ids)
    }
    return sorted(dockerd | under | shims)


UPLOAD_DONE = b"done\n"


def upload_exact(port: int, size: int) -> tuple[float, float]:
    """Send ``size`` bytes to a local port whose service answers UPLOAD_DONE once it has read
    them all: seconds to that answer (the pod has every byte) and to the end of the stream. No
    half-close is needed, so neither side's handling of one is in the figure."""
    block = memoryview(bytes(1 << 20))
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        for _ in range(size // len(block)):
            s.sendall(block)
        if rest := size % len(block):
            s.sendall(block[:rest])
        answer = b""
        while len(answer) < len(UPLOAD_DONE) and (chunk := s.recv(64)):
            answer += chunk
        last = time.perf_counter() - start
        assert answer == UPLOAD_DONE, f"port-forward upload: the pod answered {answer!r}"
        while s.recv(64):
            pass
        return last, time.perf_counter() - start


def download_exact(port: int, size: int) -> tuple[float, float]:
    """Read ``size`` bytes from a local port: seconds to the last byte and to the end of the
    stream (they differ by how long the node takes to close the forwarded connection)."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        total = 0
        buf = bytearray(1 << 20)
        while total < size and (n := s.recv_into(buf)):
            total += n
        last = time.perf_counter() - start
        assert total == size, f"port-forward: {total} bytes, expected {size}"
        while s.recv_into(buf):
            pass
        return last, time.perf_counter() - start


@dataclass
class CriSide:
    """One node behind its own gateway: where kubectl goes, and what to count CPU of."""

    name: str
    gateway: Server
    stream_pid: int  # the process that serves the node's stream URLs
    engine: Callable[[], list[int]]  # the engine processes under it (read before each run)
    endpoint: str = ""  # the node's CRI socket (the `calls` part)

    def kubectl(self, version: str, *args: str) -> list[str]:
        return [kubectl_path(version), "--kubeconfig", str(self.gateway.kubeconfig),
                "--cache-dir", str(self.gateway.state_dir / f"kc-{version}"), *args]  # fmt: skip

    def sessions(self, kind: str) -> dict[str, int]:
        """Proxied sessions of ``kind`` so far, by transport (the gateway's counter: it counts a
        session once the node has answered 101, when the session ends)."""
        text = self.gateway.metrics()
        return {
            transport: int(metric(text, "streamsrv_sessions_total", kind=kind, transport=transport))
            for transport in ("spdy", "websocket")
        }

    def parts(self, client: Callable[[], float]) -> dict[str, Callable[[], float]]:
        gateway = self.gateway.proc.pid if self.gateway.proc else 0
        engine = self.engine()
        return {
            "gateway": lambda: cpu_seconds(gateway),
            "stream server": lambda: cpu_seconds(self.stream_pid),
            "engine": lambda: sum(cpu_seconds(p) for p in engine),
            "client": client,
        }


class CriSideBySide:
    """Row 10: containerd 1.6's CRI plugin (its stream server is the kubelet's Go streaming
    library) and `streamsrv cri --runtime docker`, each behind its own `streamsrv serve
    --cri-endpoint` gateway, with the same pod; identical kubectl commands, A B A B."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pod = unique("cribench")
        self.rows: list[str] = []
        self.cpu_rows: list[str] = []
        self.notes: list[str] = []

    # ------------------------------------------------------------------ the two nodes

    def run(self) -> list[tuple[str, str, list[str]]]:
        from tests.containerd_env import containerd_cri, shim_pids
        from tests.cri_env import StreamsrvCri

        started = time.perf_counter()
        self.tmp.mkdir(parents=True, exist_ok=True)
        manifest = self.tmp / "pod.yaml"
        manifest.write_text(cri_manifest(self.pod))
        with contextlib.ExitStack() as stack:
            ctd = stack.enter_context(containerd_cri(self.tmp / "go", stream_tls=CRI_GO_TLS))
            assert Path(proc_table()[ctd.pid][1].split()[0]).name == "containerd", ctd.pid
            assert (ctd.stream_ca is not None) == CRI_GO_TLS
            go_gateway = self._gateway(stack, "go-gateway", ctd.endpoint, ctd.stream_ca)
            go = CriSide(GO_NAME, go_gateway, ctd.pid, partial(shim_pids, ctd.socket), ctd.endpoint)
            plain = ["--stream-plain-http"] if CRI_PLAIN_HTTP else []
            ctd.ctr("images", "import", "--snapshotter", ctd.snapshotter,
                    str(self._image_tar()), namespace=CTD_NAMESPACE)  # fmt: skip
            on_ctd = StreamsrvCri(
                self.tmp / "ours-ctd",
                "containerd",
                [*plain, "--containerd-address", str(ctd.socket),
                 "--containerd-namespace", CTD_NAMESPACE,
                 "--containerd-snapshotter", ctd.snapshotter],
            )  # fmt: skip
            on_ctd.start()
            stack.callback(on_ctd.stop)
            assert on_ctd.proc is not None
            ctd_gateway = self._gateway(
                stack,
                "ours-ctd-gateway",
                on_ctd.endpoint,
                None if CRI_PLAIN_HTTP else on_ctd.ca_file,
            )
            ours_ctd = CriSide(
                CTD_NAME, ctd_gateway, on_ctd.proc.pid,
                partial(self._containerd_engine, ctd.pid, ctd.socket), on_ctd.endpoint,
            )  # fmt: skip
            sides = [go, ours_ctd]
            if CRI_DOCKER:
                stack.callback(self._remove_docker_pod)  # after `streamsrv cri` stopped
                cri = StreamsrvCri(self.tmp / "ours", "docker", plain)
                cri.start()
                stack.callback(cri.stop)
                assert cri.proc is not None
                assert cri.stream_url.startswith("http://" if CRI_PLAIN_HTTP else "https://")
                ca = None if CRI_PLAIN_HTTP else cri.ca_file
                gateway = self._gateway(stack, "ours-gateway", cri.endpoint, ca)
                sides.append(
                    CriSide(OURS_NAME, gateway, cri.proc.pid, self._docker_engine, cri.endpoint)
                )
            for side in sides:
                r = side.gateway.cli("pod", "run", "-f", str(manifest))
                assert r.returncode == 0, f"{side.name}: pod run: {r.stderr}"
                stack.callback(self._remove_pod, side)
            for side in sides:
                self._wait_running(side)
            setup = time.perf_counter() - started
            self._measure(*sides)
            measured = time.perf_counter() - started - setup
        total = time.perf_counter() - started
        self.notes.append(
            f"Row 10 took {total:.0f} s: {setup:.0f} s to start both nodes, gateways and pods, "
            f"{measured:.0f} s measuring, {total - setup - measured:.0f} s to clean up."
        )
        go_stream = (
            "https (enable_tls_streaming, a certificate from the bench's CA)"
            if CRI_GO_TLS
            else "plain http (enable_tls_streaming = false, its default)"
        )
        stream = "plain http" if CRI_PLAIN_HTTP else "https (its default; --cri-stream-ca)"
        notes = [
            "Each node has its own `streamsrv serve --cri-endpoint` gateway (kubectl talks to "
            "it; it proxies each session to the node's stream URL) and the same pod; the "
            f"kubectl commands are identical and alternate, Go first; medians of {RUNS} runs.",
            "Transports (read from each gateway's session counter, not assumed): kubectl 1.27 "
            "speaks SPDY to both. kubectl 1.33 asks for WebSocket v5 first: streamsrv cri takes "
            "it (v5 for exec, the WebSocket tunnel for port-forward); containerd 1.6's stream "
            "server has no v5 and no WebSocket port-forward, so kubectl 1.33 falls back to SPDY "
            "there, after one refused upgrade per session.",
            f"Gateway to node (BENCH_CRI_HOPS={CRI_HOPS}): {go_stream} to containerd; {stream}"
            " to streamsrv cri.",
            "Below the stream server: containerd reads the shims' fifos itself; streamsrv cri "
            "goes through dockerd's exec API (dockerd reads its containerd's fifos). So each "
            "side is a stream server with its own engine path under it, not the stream server "
            "alone.",
            "Ratios: streamsrv cri / Go for throughput, Go / streamsrv cri for times (above 1: "
            "streamsrv cri is better). Port-forward rates are to the last byte.",
            *self.notes,
        ]
        return [
            (
                "Row 10, CRI side by side:\n\n"
                + "\n".join(f"- {n}" for n in notes)
                + "\n\nRow 10, CPU seconds per GiB moved, by process (medians of the same runs;"
                " gateway: `streamsrv serve`; stream server: containerd, whose CRI plugin, stream"
                " server and container I/O are one process, or `streamsrv cri`; engine:"
                " containerd's shims with the commands they ran, or dockerd, its containerd and"
                " the pod's shims, dockerd and its containerd being shared with whatever else"
                " uses that engine; client: kubectl, for port-forward with the bench's socket"
                " code; the pod's `nc`/`dd` are left out):",
                "| run | gateway | stream server | engine | client | all"
                " | wall seconds per GiB |\n|---|---|---|---|---|---|---|",
                self.cpu_rows,
            )
        ]

    def _gateway(
        self, stack: contextlib.ExitStack, name: str, endpoint: str, ca: Path | None = None
    ) -> Server:
        extra = ["--cri-endpoint", endpoint] + (["--cri-stream-ca", str(ca)] if ca else [])
        gateway = Server(self.tmp / name, extra=extra)
        gateway.start()
        stack.callback(gateway.stop)
        return gateway

    @staticmethod
    def _image_tar() -> Path:
        from tests.ctd_runtime import _image_tar

        return Path(_image_tar())

    @staticmethod
    def _containerd_engine(pid: int, socket_path: Path) -> list[int]:
        """containerd itself (shared with the Go node, idle while we run) and the shims of our
        namespace."""
        from tests.containerd_env import shim_pids

        ours = []
        for shim in shim_pids(socket_path):
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{shim}/cmdline").read_bytes().split(b"\0")
                if CTD_NAMESPACE.encode() in argv:
                    ours.append(shim)
        return [pid, *ours]

    def _docker_ids(self) -> list[str]:
        r = subprocess.run(
            ["docker", "ps", "-aq", "--no-trunc", "-f", f"label=io.kubernetes.pod.name={self.pod}"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return r.stdout.split()

    def _docker_engine(self) -> list[int]:
        return docker_engine_pids(self._docker_ids())

    def _remove_pod(self, side: CriSide) -> None:
        r = side.gateway.cli("pod", "rm", self.pod)
        if r.returncode != 0:
            print(f"{side.name}: pod rm {self.pod}: {r.stderr.strip()}", file=sys.stderr)

    def _remove_docker_pod(self) -> None:
        """Whatever of the pod the engine still has (only this pod's containers: the engine
        may be shared)."""
        if ids := self._docker_ids():
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)

    def _wait_running(self, side: CriSide) -> None:
        deadline = time.monotonic() + 120
        phase = ""
        while time.monotonic() < deadline:
            for version in CRI_VERSIONS:  # both fill their discovery cache here
                r = subprocess.run(
                    side.kubectl(version, "get", "pod", self.pod, "-o", "jsonpath={.status.phase}"),
                    capture_output=True, text=True,
                )  # fmt: skip
                phase = r.stdout
            if phase == "Running":
                return
            time.sleep(0.2)
        raise AssertionError(f"{side.name}: pod {self.pod} is {phase!r}, not Running")

    # ------------------------------------------------------------------ measuring

    def _measure(self, *sides: CriSide) -> None:
        data = self.tmp / "stdin.bin"
        with data.open("wb") as f:
            f.truncate(CRI_IN_SIZE)
        out_cmd = [
            "sh",
            "-c",
            f"dd if=/dev/zero bs=65536 count={CRI_OUT_SIZE // 65536} 2>/dev/null",
        ]
        in_cmd = DD_IN_OPEN
        for version in CRI_VERSIONS:
            for side in sides:  # one session each first: nothing measured pays for a first time
                subprocess.run(side.kubectl(version, "exec", self.pod, "-c", "main", "--", "true"),
                               check=True, capture_output=True)  # fmt: skip
        exec_args = ["exec", self.pod, "-c", "main", "--"]
        for version in CRI_VERSIONS if "stdout" in CRI_PARTS else ():
            what = f"exec stdout {CRI_OUT_SIZE >> 20} MiB"
            self._exec_rates(sides, version, what, CRI_OUT_SIZE, [*exec_args, *out_cmd], None)
        stdin_args = ["exec", "-i", self.pod, "-c", "main", "--"]
        for version in CRI_VERSIONS if "stdin" in CRI_PARTS else ():
            what = f"exec stdin {CRI_IN_SIZE >> 20} MiB"
            self._exec_rates(sides, version, what, CRI_IN_SIZE, [*stdin_args, *in_cmd], data)
        for version in CRI_VERSIONS if "portforward" in CRI_PARTS else ():
            self._portforward(sides, version)
        for version in CRI_VERSIONS if "latency" in CRI_PARTS else ():
            self._latency(sides, version)
        if "calls" in CRI_PARTS:
            self._calls(sides)

    def _settled(
        self, side: CriSide, kind: str, before: dict[str, int], count: int
    ) -> dict[str, int]:
        """The sessions ``side``'s gateway counted since ``before``: ``count`` of them, all of
        one transport, which it returns (the counter moves when a session has ended)."""
        deadline = time.monotonic() + 10
        while True:
            now = side.sessions(kind)
            delta = {t: now[t] - before[t] for t in now}
            if sum(delta.values()) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert sum(delta.values()) == count and max(delta.values()) == count, (
            f"{side.name}: expected {count} {kind} sessions of one transport, got {delta}"
        )
        return delta

    @staticmethod
    def _transport(delta: dict[str, int], version: str, kind: str) -> str:
        if delta["websocket"]:
            return "WebSocket tunnel" if kind == "portforward" else "WebSocket v5"
        # kubectl 1.33 asks for WebSocket first: SPDY is what it fell back to
        return "SPDY, fallback" if version >= "1.31" else "SPDY"

    def _rows(
        self,
        what: str,
        version: str,
        transports: dict[str, str],
        values: dict[str, list[float]],
        text: Callable[[list[float]], str],
        times: bool = False,
    ) -> None:
        for name in OUR_NAMES:
            if name in values:
                self._row(
                    what, version, transports, name, values[GO_NAME], values[name], text, times
                )

    def _row(
        self,
        what: str,
        version: str,
        transports: dict[str, str],
        name: str,
        go: list[float],
        ours: list[float],
        text: Callable[[list[float]], str],
        times: bool = False,
    ) -> None:
        label = (
            f"CRI side by side: {what}, kubectl {version} "
            f"(Go: {transports[GO_NAME]}; ours: {transports[name]})"
        )
        if not go or not ours:
            line = (
                f"| {label} | {name}: {text(ours) if ours else 'no complete run'} | {GO_NAME}: "
                f"{text(go) if go else 'no complete run'} | - |"
            )
            print(line, flush=True)
            self.rows.append(line)
            return
        go_m, ours_m = statistics.median(go), statistics.median(ours)
        ratio = go_m / ours_m if times else ours_m / go_m
        line = f"| {label} | {name}: {text(ours)} | {GO_NAME}: {text(go)} | {ratio:.2f} |"
        print(line, flush=True)
        self.rows.append(line)

    def _exec_rates(
        self, sides: tuple[CriSide, ...], version: str, what: str, size: int,
        args: list[str], stdin: Path | None,
    ) -> None:  # fmt: skip
        before = {side.name: side.sessions("exec") for side in sides}
        rates: dict[str, list[float]] = {side.name: [] for side in sides}
        cpu: dict[str, list[dict[str, float]]] = {side.name: [] for side in sides}
        walls: dict[str, list[float]] = {side.name: [] for side in sides}
        short: dict[str, list[bytes]] = {}  # runs whose process did not get all of stdin
        for _ in range(RUNS):
            for side in sides:  # A B A B ...
                cmd = side.kubectl(version, *args)
                report = bytearray()
                with CpuMeter(side.parts(children_cpu)) as meter:
                    seconds, total = timed(cmd, stdin, report)
                if stdin is None:
                    assert total == size, f"{side.name}: {total} bytes, expected {size}"
                elif not dd_read_all(bytes(report), size):  # every timed run is checked
                    short.setdefault(side.name, []).append(bytes(report).split(b"\n")[0])
                    continue  # a run that lost input has no rate
                rates[side.name].append(size / seconds)
                cpu[side.name].append(meter.spent)
                walls[side.name].append(seconds)
        count = RUNS
        if stdin is not None:  # and all of it arrives (`dd` says nothing of it): once, untimed
            for side in sides:
                cmd = side.kubectl(version, "exec", "-i", self.pod, "-c", "main", "--", "wc", "-c")
                with stdin.open("rb") as f:
                    r = subprocess.run(cmd, stdin=f, capture_output=True, check=True)
                if int(r.stdout) != size:
                    short.setdefault(side.name, []).append(b"wc -c: " + r.stdout.strip())
            count += 1
            for name, lost in short.items():
                self.notes.append(
                    f"{what}, kubectl {version}, {name}: {len(lost)} of {RUNS + 1} runs did not "
                    f"deliver all {size} bytes to the process (left out of the rate): "
                    + ", ".join(repr(x.decode(errors="replace")) for x in lost)
                )
        transports = {}
        for side in sides:
            delta = self._settled(side, "exec", before[side.name], count)
            transports[side.name] = self._transport(delta, version, "exec")
            if not cpu[side.name]:
                continue
            self.cpu_rows.append(cpu_row(
                f"{what}, kubectl {version}, {side.name} ({transports[side.name]})",
                cpu[side.name], walls[side.name], size,
            ))  # fmt: skip
        self._rows(what, version, transports, rates, rate_text)

    def _portforward(self, sides: tuple[CriSide, ...], version: str) -> None:
        """One `kubectl port-forward` per side for both services; each run moves CRI_PF_SIZE
        pod to client (DOWN) and then client to pod (UP) through each side in turn."""
        directions = {
            "pod to client": (DOWN, download_exact),
            "client to pod": (UP, upload_exact),
        }
        before = {side.name: side.sessions("portforward") for side in sides}
        forwards: dict[str, tuple[subprocess.Popen[bytes], dict[int, int]]] = {}
        logs = []
        names = [side.name for side in sides]
        rates = {d: {n: list[float]() for n in names} for d in directions}
        closes = {d: {n: list[float]() for n in names} for d in directions}
        cpu = {d: {n: list[dict[str, float]]() for n in names} for d in directions}
        walls = {d: {n: list[float]() for n in names} for d in directions}
        try:
            for side in sides:
                log_path = self.tmp / f"pf-{version}-{side.gateway.state_dir.name}.log"
                log = log_path.open("w")
                logs.append(log)
                proc = subprocess.Popen(
                    side.kubectl(version, "port-forward", self.pod, f":{DOWN}", f":{UP}"),
                    stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
                forwards[side.name] = proc, {}
                forwards[side.name] = proc, wait_forwarding(proc, log_path, [DOWN, UP])
            for _ in range(RUNS):
                for side in sides:
                    proc, ports = forwards[side.name]
                    for direction, (remote, move) in directions.items():
                        parts = side.parts(own_cpu)
                        parts["client"] = partial(
                            lambda pid: cpu_seconds(pid) + own_cpu(), proc.pid
                        )
                        with CpuMeter(parts) as meter:
                            last, end = move(ports[remote], CRI_PF_SIZE)
                        rates[direction][side.name].append(CRI_PF_SIZE / last)
                        closes[direction][side.name].append(end - last)
                        cpu[direction][side.name].append(meter.spent)
                        walls[direction][side.name].append(last)
        finally:
            for proc, _ in forwards.values():
                proc.terminate()
                proc.wait()
            for log in logs:
                log.close()
        transports = {}
        for side in sides:
            delta = self._settled(side, "portforward", before[side.name], 1)
            transports[side.name] = self._transport(delta, version, "portforward")
        for direction in directions:
            what = f"port-forward {CRI_PF_SIZE >> 20} MiB {direction}"
            for side in sides:
                self.cpu_rows.append(cpu_row(
                    f"{what}, kubectl {version}, {side.name} ({transports[side.name]})",
                    cpu[direction][side.name], walls[direction][side.name], CRI_PF_SIZE,
                ))  # fmt: skip
            self._rows(what, version, transports, rates[direction], rate_text)
            done = "the last byte" if direction == "pod to client" else "the pod's answer"
            self.notes.append(
                f"Port-forward {direction}, kubectl {version}: from {done} to the end of the "
                f"forwarded connection (not in the rate) took "
                f"{ms_text(closes[direction][GO_NAME])} on the Go side (containerd waits up to "
                f"1 s for the other direction before it closes), "
                + ", ".join(
                    f"{ms_text(closes[direction][n])} on {n}" for n in OUR_NAMES if n in names
                )
                + "."
            )

    def _latency(self, sides: tuple[CriSide, ...], version: str) -> None:
        before = {side.name: side.sessions("exec") for side in sides}
        times: dict[str, list[float]] = {side.name: [] for side in sides}
        for _ in range(CRI_LATENCY_RUNS):
            for side in sides:
                cmd = side.kubectl(version, "exec", self.pod, "-c", "main", "--", "true")
                start = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                times[side.name].append(time.perf_counter() - start)
        transports = {
            side.name: self._transport(
                self._settled(side, "exec", before[side.name], CRI_LATENCY_RUNS), version, "exec"
            )
            for side in sides
        }
        self._rows(
            f"exec start `true` p50, {CRI_LATENCY_RUNS} runs",
            version, transports, times, ms_text, times=True,
        )  # fmt: skip

    def _calls(self, sides: tuple[CriSide, ...]) -> None:
        """CRI calls themselves: ListPodSandbox and ListContainers for the pod, sent at once
        (the gateway's pod lookup; the kubelet's relist sends the same pair), CRI_CALLS pairs
        per run on each node in turn; the latency of a pair, and the node process's CPU."""
        lat: dict[str, list[float]] = {side.name: [] for side in sides}
        cpu: dict[str, list[float]] = {side.name: [] for side in sides}
        for _ in range(RUNS):
            for side in sides:
                p50, spent = asyncio.run(self._call_pairs(side))
                lat[side.name].append(p50)
                cpu[side.name].append(spent)
        what = f"CRI ListPodSandbox + ListContainers at once, {CRI_CALLS} pairs per run"
        for name in OUR_NAMES:
            if name not in lat:
                continue
            for label, values, text in (
                ("p50 per pair", lat, us_text),
                ("node process CPU per pair", cpu, us_text),
            ):
                go_m, ours_m = statistics.median(values[GO_NAME]), statistics.median(values[name])
                line = (
                    f"| CRI side by side: {what}, {label} | {name}: {text(values[name])} | "
                    f"{GO_NAME}: {text(values[GO_NAME])} | {go_m / ours_m:.2f} |"
                )
                print(line, flush=True)
                self.rows.append(line)

    async def _call_pairs(self, side: CriSide) -> tuple[float, float]:
        from streamsrv.cri import api_pb2 as pb
        from streamsrv.cri.client import CriClient
        from streamsrv.pods import pod_filter

        labels = pod_filter("default", self.pod)
        async with CriClient(side.endpoint) as cri:

            async def pair() -> None:
                await asyncio.gather(
                    cri.list_pod_sandbox(pb.PodSandboxFilter(label_selector=labels)),
                    cri.list_containers(pb.ContainerFilter(label_selector=labels)),
                )

            for _ in range(50):  # the connection made and warm
                await pair()
            times = []
            before = cpu_seconds(side.stream_pid)
            for _ in range(CRI_CALLS):
                start = time.perf_counter()
                await pair()
                times.append(time.perf_counter() - start)
            spent = cpu_seconds(side.stream_pid) - before
        return statistics.median(times), spent / CRI_CALLS


# The bench pod: `main` to exec into (alone, the pod of row 5 on the containerd runtime), and
# the two port-forward services.
IDLE_MANIFEST = f"""apiVersion: v1
kind: Pod
metadata: {{name: bench}}
spec:
  containers:
  - {{name: main, image: {BUSYBOX}, command: [sleep, "100000"]}}
"""
#: Idle shells per container on the containerd runtime (row 5, BENCH_IDLE_CONTAINERD).
IDLE_PER_CONTAINER = 300


def idle_containers(shells: int) -> list[str]:
    """The containers the idle shells are spread over: main, main2, ..."""
    count = max(1, -(-shells // IDLE_PER_CONTAINER))
    return ["main", *(f"main{i}" for i in range(2, count + 1))]


def idle_manifest(containers: Sequence[str]) -> str:
    """The idle pod with these sleeping containers (the first is IDLE_MANIFEST's main)."""
    extra = "".join(
        f'  - {{name: {name}, image: {BUSYBOX}, command: [sleep, "100000"]}}\n'
        for name in containers[1:]
    )
    return IDLE_MANIFEST + extra


MANIFEST = (
    IDLE_MANIFEST
    + f"""  - name: down
    image: {BUSYBOX}
    command: [busybox, nc, -ll, -p, "{DOWN}", -e, dd, if=/dev/zero, bs=65536,
              count={PF_SIZE // 65536}]
  - name: up
    image: {BUSYBOX}
    command: [busybox, nc, -ll, -p, "{UP}", -e, dd, of=/dev/null, bs=65536]
"""
)


def classic_rows(tmp: Path) -> list[tuple[str, str, list[str]]]:
    """Rows 1-9: one `streamsrv serve` on the Docker runtime with the bench pod. They clear the
    engine of every pod first and after (scripts/bench gives them a private engine)."""
    _remove_everything()
    server = Server(tmp / "state")
    server.start()
    try:
        manifest = tmp / "pod.yaml"
        manifest.write_text(MANIFEST)
        r = server.cli("pod", "run", "-f", str(manifest))
        assert r.returncode == 0, r.stderr
        bench = Bench(tmp, server)
        steps = {
            1: bench.row1_stdout,
            2: bench.row2_stdin,
            3: bench.row3_portforward,
            4: bench.row4_latency,
            5: bench.row5_idle_shells,
            6: bench.row6_many_execs,
            7: bench.row7_exit_to_exit,
            8: bench.row8_python_clients,
            9: bench.row9_pod_network,
        }
        for number, step in steps.items():
            if number in ROWS:
                step()
    finally:
        server.stop()
        _remove_everything()
    return [
        (
            "Python clients, exec over WebSocket v5 (medians; CPU seconds per GiB of the"
            " client process and of the server, streamsrv.client / kubectl 1.33 /"
            " kubernetes):",
            "| row | streamsrv.client | kubectl 1.33 | kubernetes client | ours / kubectl"
            " | ours / kubernetes | client CPU-s/GiB | server CPU-s/GiB |\n"
            "|---|---|---|---|---|---|---|---|",
            bench.client_rows,
        ),
        (
            "CPU seconds per GiB moved, by process (medians of the same runs; the engine"
            " column holds dockerd, containerd and the shims with the command they ran):",
            "| run | engine | streamsrv | client | all | wall seconds per GiB |\n"
            "|---|---|---|---|---|---|",
            bench.cpu_rows,
        ),
        (
            "Port-forward CPU seconds per GiB, by process (medians of the same runs; the"
            " pod's services are left out, they are the same programs in both):",
            "| run | streamsrv | kubectl | client | all | wall seconds per GiB |\n"
            "|---|---|---|---|---|---|",
            bench.pf_cpu_rows,
        ),
    ]


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="streamsrv-bench-"))
    tables: list[tuple[str, str, list[str]]] = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up as on Ctrl-C
    latency = [f"latency {LATENCY_RUNS} runs"] if ROWS - {10} else []
    latency += [f"row 10 latency {CRI_LATENCY_RUNS} runs"] if 10 in ROWS else []
    print(f"\nstreamsrv benchmark ({RUNS} runs per figure; {'; '.join(latency)})\n")
    print("| what | streamsrv (median, min-max) | baseline, same run | ratio |")
    print("|---|---|---|---|", flush=True)
    try:
        if ROWS - {10}:
            tables += classic_rows(tmp)
        if 10 in ROWS:
            tables += CriSideBySide(tmp / "cri").run()
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)
    for intro, header, rows in tables:
        if rows:
            print(f"\n{intro}\n")
            print(header)
            print("\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
