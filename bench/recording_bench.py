"""What recording costs a session: `streamsrv serve` without and with `--record`, side by side.

Each config is its own server on the engine of scripts/bench (Docker), with one pod; kubectl
1.33 runs the same exec in each config in turn (A B A B ...). Rows:

1. exec stdout, 512 MiB of zeros (`dd`): a bulk transfer; with `--record` the recording is
   truncated once 4 MiB wait for the disk, and the session must not slow down for it.
2. exec stdout, 64 MiB of text lines (`yes`): what a noisy interactive session looks like.

Per run: throughput seen by kubectl, and the server process's CPU seconds per GiB
(`/proc/PID/stat`), medians of BENCH_RUNS (3). ``BENCH_BASE=DIR`` adds a third config: the
server from another checkout (e.g. a `git worktree` of an older commit) without recording,
for an A/B of the per-session accounting itself. Figures only: nothing here asserts a time.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import BUSYBOX, PAUSE, kubectl_path  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
ROWS = [
    ("exec stdout 512 MiB of zeros", 512 << 20, "dd if=/dev/zero bs=65536 count=8192 2>/dev/null"),
    ("exec stdout 64 MiB of text", 64 << 20, "yes 'streamsrv recording bench' | head -c 67108864"),
]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Config:
    def __init__(self, name: str, tmp: Path, root: Path, record: bool) -> None:
        self.name = name
        self.state = tmp / name
        self.state.mkdir()
        self.rec = self.state / "rec"
        extra = ["--record", str(self.rec)] if record else []
        env = {**os.environ, "PYTHONPATH": str(root)}
        self.log = (self.state / "log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamsrv", "--state-dir", str(self.state), "serve",
             "--listen", "127.0.0.1:0", "--runtime", "docker", "--pause-image", PAUSE, *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=str(tmp),
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not (self.state / "kubeconfig").exists():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.name
            time.sleep(0.1)
        self.pod = f"recbench-{name}"
        manifest = self.state / "pod.json"
        manifest.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": self.pod},
            "spec": {"containers": [{"name": "main", "image": BUSYBOX,
                                     "command": ["sleep", "100000"]}]},
        }))  # fmt: skip
        subprocess.run(self.kubectl("create", "-f", str(manifest)), check=True,
                       capture_output=True)  # fmt: skip
        subprocess.run(self.kubectl("wait", "--for=condition=Ready", f"pod/{self.pod}",
                                    "--timeout=120s"), check=True, capture_output=True)  # fmt: skip

    def kubectl(self, *args: str) -> list[str]:
        return [kubectl_path("1.33"), "--kubeconfig", str(self.state / "kubeconfig"), *args]

    def run(self, script: str, size: int) -> tuple[float, float]:
        """MB/s seen by kubectl, server CPU-s per GiB."""
        c0, t0 = cpu_seconds(self.proc.pid), time.monotonic()
        r = subprocess.run(self.kubectl("exec", self.pod, "--", "sh", "-c", script),
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
        t1, c1 = time.monotonic(), cpu_seconds(self.proc.pid)
        assert r.returncode == 0 and len(r.stdout) == size, (self.name, len(r.stdout))
        return size / (t1 - t0) / 1e6, (c1 - c0) * (1 << 30) / size

    def recordings(self) -> tuple[int, int]:
        """Sessions recorded so far, and how many of them were truncated."""
        lines = [json.loads(x) for p in self.rec.glob("audit-*.jsonl")
                 for x in p.read_text().splitlines()]  # fmt: skip
        return len(lines), sum(x["truncated"] for x in lines)

    def stop(self) -> None:
        subprocess.run(self.kubectl("delete", "pod", self.pod, "--grace-period=0"),
                       capture_output=True)  # fmt: skip
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


def fmt(values: list[float], digits: int = 0) -> str:
    med = statistics.median(values)
    return f"{med:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="recbench-") as tmp:
        configs = [Config("plain", Path(tmp), ROOT, False), Config("record", Path(tmp), ROOT, True)]
        base = os.environ.get("BENCH_BASE")
        if base:
            configs.insert(0, Config("base", Path(tmp), Path(base), False))
        try:
            print(f"\n### Recording cost (kubectl 1.33, Docker, medians of {RUNS}, min-max)\n")
            print("| row | config | MB/s | server CPU-s/GiB | recordings |")
            print("|---|---|---|---|---|")
            for what, size, script in ROWS:
                got: dict[str, list[tuple[float, float]]] = {c.name: [] for c in configs}
                before = {c.name: c.recordings() for c in configs}
                for _ in range(RUNS):
                    for c in configs:
                        got[c.name].append(c.run(script, size))
                for c in configs:
                    rates = [r for r, _ in got[c.name]]
                    cpus = [x for _, x in got[c.name]]
                    (n0, t0), (n1, t1) = before[c.name], c.recordings()
                    note = f"{t1 - t0} of {n1 - n0} truncated" if n1 > n0 else ""
                    print(f"| {what} | {c.name} | {fmt(rates)} | {fmt(cpus, 2)} | {note} |",
                          flush=True)  # fmt: skip
        finally:
            for c in configs:
                c.stop()


if __name__ == "__main__":
    main()
