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
     without CNI, alternating, BENCH_PODS of each (the runtime called in-process).
Medians of RUNS runs with min-max. Ratios are ours / baseline for throughput (higher is better)
and baseline / ours for times. Figures only: nothing here asserts a time.

BENCH_ROWS=1,2,... picks rows; BENCH_RUNS, BENCH_LATENCY_RUNS, BENCH_SHELLS, BENCH_EXECS scale.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
    pod_manifest,
    proc_table,
    sleeper,
    unique,
    wait_forwarding,
)

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
LATENCY_RUNS = int(os.environ.get("BENCH_LATENCY_RUNS", "50"))
SHELLS = int(os.environ.get("BENCH_SHELLS", "1000"))
EXECS = int(os.environ.get("BENCH_EXECS", "1000"))
ROWS = {int(r) for r in os.environ.get("BENCH_ROWS", "1,2,3,4,5,6,7,8,9").split(",")}
PODS = int(os.environ.get("BENCH_PODS", "15"))
OUT_SIZE = 1 << 30
IN_SIZE = 512 << 20
PF_SIZE = 512 << 20
PY_SIZE = 64 << 20
DD_OUT = f"dd if=/dev/zero bs=65536 count={OUT_SIZE // 65536} 2>/dev/null"
DD_IN = "dd of=/dev/null bs=65536 2>/dev/null"
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


def timed(cmd: list[str], stdin_path: Path | None = None) -> tuple[float, int]:
    """Seconds to run ``cmd`` and the bytes it wrote to stdout (read as fast as possible)."""
    stdin = stdin_path.open("rb") if stdin_path else subprocess.DEVNULL
    try:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        total = 0
        while chunk := proc.stdout.read1(1 << 20):  # type: ignore[attr-defined]
            total += len(chunk)
        code = proc.wait()
        elapsed = time.perf_counter() - start
    finally:
        if stdin_path:
            stdin.close()  # type: ignore[union-attr]
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    assert code == 0, f"{cmd[:3]}... exited {code}: {err[-500:]}"
    return elapsed, total


def summary(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def rate_text(values: list[float]) -> str:
    med, lo, hi = summary(values)
    return f"{med / 1e6:.0f} MB/s ({lo / 1e6:.0f}-{hi / 1e6:.0f})"


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
        assert self.server.proc is not None
        pid = self.server.proc.pid
        before = rss_kib(pid)
        proc = subprocess.run(
            self.pyclient("shells", str(SHELLS), str(pid)),
            capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        alive, peak = (int(x) for x in proc.stdout.split()[-2:])
        grown = peak - before
        self.row(
            f"{SHELLS} concurrent idle `sh -i` (tty), Docker runtime",
            f"{alive}/{SHELLS} alive; server RSS {peak / 1024:.0f} MB "
            f"({grown / SHELLS:.0f} KiB per session)",
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


MANIFEST = f"""apiVersion: v1
kind: Pod
metadata: {{name: bench}}
spec:
  containers:
  - {{name: main, image: {BUSYBOX}, command: [sleep, "100000"]}}
  - name: down
    image: {BUSYBOX}
    command: [busybox, nc, -ll, -p, "{DOWN}", -e, dd, if=/dev/zero, bs=65536,
              count={PF_SIZE // 65536}]
  - name: up
    image: {BUSYBOX}
    command: [busybox, nc, -ll, -p, "{UP}", -e, dd, of=/dev/null, bs=65536]
"""


def main() -> None:
    _remove_everything()
    tmp = Path(tempfile.mkdtemp(prefix="streamsrv-bench-"))
    server = Server(tmp / "state")
    server.start()
    try:
        manifest = tmp / "pod.yaml"
        manifest.write_text(MANIFEST)
        r = server.cli("pod", "run", "-f", str(manifest))
        assert r.returncode == 0, r.stderr
        bench = Bench(tmp, server)
        print(f"\nstreamsrv benchmark ({RUNS} runs per figure; latency {LATENCY_RUNS} runs)\n")
        print("| what | streamsrv (median, min-max) | baseline, same run | ratio |")
        print("|---|---|---|---|", flush=True)
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
        if bench.client_rows:
            print(
                "\nPython clients, exec over WebSocket v5 (medians; CPU seconds per GiB of the"
                " client process and of the server, streamsrv.client / kubectl 1.33 /"
                " kubernetes):\n"
            )
            print("| row | streamsrv.client | kubectl 1.33 | kubernetes client | ours / kubectl"
                  " | ours / kubernetes | client CPU-s/GiB | server CPU-s/GiB |")  # fmt: skip
            print("|---|---|---|---|---|---|---|---|")
            print("\n".join(bench.client_rows), flush=True)
        if bench.cpu_rows:
            print(
                "\nCPU seconds per GiB moved, by process (medians of the same runs; the engine"
                " column holds dockerd, containerd and the shims with the command they ran):\n"
            )
            print("| run | engine | streamsrv | client | all | wall seconds per GiB |")
            print("|---|---|---|---|---|---|")
            print("\n".join(bench.cpu_rows), flush=True)
        if bench.pf_cpu_rows:
            print(
                "\nPort-forward CPU seconds per GiB, by process (medians of the same runs; the"
                " pod's services are left out, they are the same programs in both):\n"
            )
            print("| run | streamsrv | kubectl | client | all | wall seconds per GiB |")
            print("|---|---|---|---|---|---|")
            print("\n".join(bench.pf_cpu_rows), flush=True)
    finally:
        server.stop()
        _remove_everything()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
