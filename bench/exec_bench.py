"""Exec throughput and start latency, each next to a baseline measured in the same run.

Run through `scripts/bench` (which starts a private engine and builds the images). Rows:
  - stdout 1 GiB (`dd bs=64k`) through kubectl 1.27 (SPDY) and 1.33 (WebSocket), against the
    same command through `docker exec` on the same engine (the raw backend stream);
  - `exec POD -- true` start-to-exit latency, p50 and p95, against `docker exec CONTAINER true`.
Medians of RUNS runs with min-max; ratios are ours / baseline throughput (higher is better) or
baseline / ours latency. Figures only: nothing here asserts a time.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import BUSYBOX, Server, _remove_everything, kubectl_path  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
LATENCY_RUNS = int(os.environ.get("BENCH_LATENCY_RUNS", "50"))
SIZE = 1 << 30
DD = f"dd if=/dev/zero bs=65536 count={SIZE // 65536} 2>/dev/null"


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Seconds to run ``cmd`` and the bytes it wrote to stdout (read as fast as possible)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    total = 0
    while chunk := proc.stdout.read1(1 << 20):  # type: ignore[attr-defined]
        total += len(chunk)
    proc.wait()
    return time.perf_counter() - start, total


def summary(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def main() -> None:
    _remove_everything()
    tmp = Path(tempfile.mkdtemp(prefix="streamsrv-bench-"))
    server = Server(tmp / "state")
    server.start()
    try:
        manifest = tmp / "pod.yaml"
        manifest.write_text(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: bench}\nspec:\n  containers:\n"
            f"  - {{name: main, image: {BUSYBOX}, command: [sleep, '100000']}}\n"
        )
        assert server.cli("pod", "run", "-f", str(manifest)).returncode == 0
        cid = subprocess.run(
            ["docker", "ps", "-q", "--no-trunc", "-f", "label=io.kubernetes.container.name=main"],
            capture_output=True, text=True, check=True,
        ).stdout.split()[0]  # fmt: skip

        def kubectl(version: str, *args: str) -> list[str]:
            return [kubectl_path(version), "--kubeconfig", str(server.kubeconfig),
                    "--cache-dir", str(tmp / f"kc-{version}"), *args]  # fmt: skip

        rows: list[str] = []
        base = [SIZE / timed(["docker", "exec", cid, "sh", "-c", DD])[0] for _ in range(RUNS)]
        b_med, b_min, b_max = summary(base)
        for label, version in (
            ("kubectl 1.27 (SPDY)", "1.27"),
            ("kubectl 1.33 (WebSocket)", "1.33"),
        ):
            rates = []
            for _ in range(RUNS):
                seconds, total = timed(kubectl(version, "exec", "bench", "--", "sh", "-c", DD))
                assert total == SIZE, f"{label}: {total} bytes"
                rates.append(SIZE / seconds)
            med, lo, hi = summary(rates)
            ours_text = f"{med / 1e6:.0f} MB/s ({lo / 1e6:.0f}-{hi / 1e6:.0f})"
            base_text = f"{b_med / 1e6:.0f} MB/s ({b_min / 1e6:.0f}-{b_max / 1e6:.0f})"
            rows.append(
                f"| exec stdout 1 GiB, {label} | {ours_text} | docker exec: {base_text} "
                f"| {med / b_med:.2f} |"
            )

        def latencies(cmd: list[str]) -> list[float]:
            out = []
            for _ in range(LATENCY_RUNS):
                start = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                out.append(time.perf_counter() - start)
            return sorted(out)

        base_lat = latencies(["docker", "exec", cid, "true"])
        for label, version in (
            ("kubectl 1.27 (SPDY)", "1.27"),
            ("kubectl 1.33 (WebSocket)", "1.33"),
        ):
            ours = latencies(kubectl(version, "exec", "bench", "--", "true"))
            p = [ours[len(ours) // 2], ours[int(len(ours) * 0.95) - 1]]
            q = [base_lat[len(base_lat) // 2], base_lat[int(len(base_lat) * 0.95) - 1]]
            ours_text = f"{p[0] * 1000:.0f} / {p[1] * 1000:.0f} ms"
            base_text = f"{q[0] * 1000:.0f} / {q[1] * 1000:.0f} ms"
            rows.append(
                f"| exec start `true`, {label}, p50 / p95 | {ours_text} "
                f"| docker exec: {base_text} | {q[0] / p[0]:.2f} |"
            )
        print(f"\nstreamsrv exec benchmark ({RUNS} runs; latency {LATENCY_RUNS} runs)\n")
        print("| what | streamsrv (median, min-max) | baseline, same run | ratio |")
        print("|---|---|---|---|")
        print("\n".join(rows))
    finally:
        server.stop()
        _remove_everything()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
