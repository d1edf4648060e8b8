"""Integrity at size, through real kubectl: every byte arrives, in order.

``python -m soak.integrity [--stdout 4GiB] [--stdin 1GiB] [--forward 1GiB] [--runtime ...]``

For each of kubectl 1.27 (SPDY) and 1.33 (WebSocket; its port-forward is SPDY in WebSocket):

- exec stdout: ``yes LINE | head -c SIZE`` in the pod; kubectl's stdout is hashed here and
  compared with the hash of the same bytes computed here.
- exec stdin: pseudo-random bytes from a seed go into ``kubectl exec -i -- sha256sum``.
- port-forward download: a pod listener serves the same pipeline; hashed here, compared.
- port-forward upload: bytes go to a pod listener that answers with their ``sha256sum``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from soak.common import MIB, LiveServer, Sampler, free_port, pod_manifest, row
from soak.kills import kubectl_path

FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)")
CHUNK = 1 << 20


LINE = "streamsrv-integrity-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOP"


def generator(size: int) -> str:
    """The shell pipeline that writes ``size`` known bytes in the pod (busybox ``yes`` is fast;
    ``seq`` wrote 5-8 MiB/s)."""
    return f"yes {LINE} | head -c {size}"


def expected(size: int) -> str:
    """sha256 of what :func:`generator` writes, computed here."""
    block = (LINE + "\n").encode() * (CHUNK // (len(LINE) + 1) + 1)
    block = block[: (len(block) // (len(LINE) + 1)) * (len(LINE) + 1)]
    h, left = hashlib.sha256(), size
    while left:
        piece = block[:left]
        h.update(piece)
        left -= len(piece)
    return h.hexdigest()


def pattern(seed: int, size: int) -> Iterator[bytes]:
    """``size`` pseudo-random bytes in 1 MiB pieces (a 16 MiB block repeated with a counter)."""
    block = random.Random(seed).randbytes(16 * MIB)
    sent, i = 0, 0
    while sent < size:
        piece = block[(i % 16) * CHUNK : (i % 16 + 1) * CHUNK]
        piece = i.to_bytes(8, "big") + piece[8:]
        piece = piece[: size - sent]
        yield piece
        sent += len(piece)
        i += 1


class Kubectl:
    def __init__(self, server: LiveServer, version: str, cache: Path) -> None:
        self.cmd = [kubectl_path(version), "--kubeconfig", str(server.kubeconfig),
                    "--cache-dir", str(cache / version)]  # fmt: skip

    def run(self, *args: str, timeout: float = 600) -> str:
        r = subprocess.run([*self.cmd, *args], capture_output=True, timeout=timeout, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {r.stderr.decode()[-500:]}")
        return r.stdout.decode()

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*self.cmd, *args], **kw)


def hash_stdout(proc: subprocess.Popen[bytes]) -> tuple[str, int]:
    assert proc.stdout is not None
    h, n = hashlib.sha256(), 0
    while chunk := proc.stdout.read(CHUNK):
        h.update(chunk)
        n += len(chunk)
    proc.wait()
    return h.hexdigest(), n


def exec_stdout(kc: Kubectl, pod: str, size: int) -> dict[str, Any]:
    t0 = time.monotonic()
    proc = kc.popen("exec", pod, "--", "sh", "-c", generator(size), stdout=subprocess.PIPE)
    got, n = hash_stdout(proc)
    took = time.monotonic() - t0
    return {"bytes": n, "ok": got == expected(size) and proc.returncode == 0, "seconds": took}


def exec_stdin(kc: Kubectl, pod: str, size: int, seed: int) -> dict[str, Any]:
    h = hashlib.sha256()
    t0 = time.monotonic()
    proc = kc.popen("exec", "-i", pod, "--", "sha256sum", stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE)  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    for piece in pattern(seed, size):
        h.update(piece)
        proc.stdin.write(piece)
    proc.stdin.close()
    out = proc.stdout.read().decode()
    proc.wait()
    took = time.monotonic() - t0
    return {"bytes": size, "ok": out.split()[:1] == [h.hexdigest()], "seconds": took}


def forward(kc: Kubectl, pod: str, port: int) -> tuple[subprocess.Popen[bytes], int]:
    """A running ``kubectl port-forward :PORT`` and the local port it picked."""
    with tempfile.TemporaryFile() as log:  # kubectl keeps its own descriptor of it
        proc = kc.popen("port-forward", f"pod/{pod}", f":{port}", stdout=log,
                        stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            log.seek(0)
            if m := FORWARDING.search(log.read().decode(errors="replace")):
                return proc, int(m.group(1))
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError("port-forward did not start")


def forward_download(kc: Kubectl, pod: str, port: int, size: int) -> dict[str, Any]:
    proc, local = forward(kc, pod, port)
    try:
        h, n = hashlib.sha256(), 0
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", local), timeout=60) as s:
            while chunk := s.recv(CHUNK):
                h.update(chunk)
                n += len(chunk)
        took = time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait()
    return {"bytes": n, "ok": h.hexdigest() == expected(size), "seconds": took}


def forward_upload(kc: Kubectl, pod: str, port: int, size: int, seed: int) -> dict[str, Any]:
    proc, local = forward(kc, pod, port)
    try:
        h = hashlib.sha256()
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", local), timeout=60) as s:
            answer: list[bytes] = []
            reader = threading.Thread(target=lambda: answer.append(_read_all(s)))
            reader.start()
            for piece in pattern(seed, size):
                h.update(piece)
                s.sendall(piece)
            s.shutdown(socket.SHUT_WR)
            reader.join(600)
        took = time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait()
    got = answer[0].decode().split()[:1] if answer else []
    return {"bytes": size, "ok": got == [h.hexdigest()], "seconds": took}


def _read_all(s: socket.socket) -> bytes:
    parts = []
    while chunk := s.recv(65536):
        parts.append(chunk)
    return b"".join(parts)


def run(
    stdout: int, stdin: int, fwd: int, runtime: str = "process", seed: int = 7
) -> dict[str, Any]:
    image = os.environ.get("STREAMSRV_TEST_BUSYBOX_IMAGE", "streamsrv/busybox:local")
    pause = os.environ.get("STREAMSRV_TEST_PAUSE_IMAGE", "streamsrv/pause:local")
    state = Path(tempfile.mkdtemp(prefix="soak-integrity-"))
    server = LiveServer(state / "state", runtime, extra=["--pause-image", pause])
    server.start()
    down, up = free_port(), free_port()
    rows: dict[str, Any] = {}
    try:
        server.run_pod(
            pod_manifest(
                "big",
                [
                    {"name": "main", "image": image, "command": ["sleep", "100000"]},
                    {
                        "name": "down",
                        "image": image,
                        "command": [
                            "busybox",
                            "nc",
                            "-ll",
                            "-p",
                            str(down),
                            "-e",
                            "sh",
                            "-c",
                            generator(fwd),
                        ],
                    },
                    {
                        "name": "up",
                        "image": image,
                        "command": ["busybox", "nc", "-ll", "-p", str(up), "-e", "sha256sum"],
                    },
                ],  # fmt: skip
            )
        )
        sampler = Sampler(server)
        sampler.start()
        for version in ("1.27", "1.33"):
            kc = Kubectl(server, version, state)
            rows[f"exec stdout {version}"] = exec_stdout(kc, "big", stdout)
            rows[f"exec stdin {version}"] = exec_stdin(kc, "big", stdin, seed)
            rows[f"port-forward download {version}"] = forward_download(kc, "big", down, fwd)
            rows[f"port-forward upload {version}"] = forward_upload(kc, "big", up, fwd, seed)
        sampler.stop()
        alive = server.alive()
        server.cli("pod", "rm", "big")  # an engine's pods outlive the server
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)
    return {
        "runtime": runtime,
        "rows": rows,
        "peak_rss_mib": sampler.peak_rss_kib // 1024,
        "server_alive": alive,
        "ok": alive and all(r["ok"] for r in rows.values()),
    }


def size_arg(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.lower().removesuffix("ib").removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stdout", type=size_arg, default=4 << 30)
    ap.add_argument("--stdin", type=size_arg, default=1 << 30)
    ap.add_argument("--forward", type=size_arg, default=1 << 30)
    ap.add_argument("--runtime", default="process", choices=("process", "docker"))
    args = ap.parse_args()
    out = run(args.stdout, args.stdin, args.forward, args.runtime)
    print(json.dumps(out))
    for name, r in out["rows"].items():
        rate = r["bytes"] / MIB / max(r["seconds"], 1e-9)
        print(
            row(
                f"integrity: {name} ({args.runtime})",
                f"{r['bytes'] / MIB:.0f} MiB at {rate:.0f} MiB/s",
                "none",
                "nothing (sha256 equal)" if r["ok"] else "BYTES DIFFER",
                f"server peak RSS {out['peak_rss_mib']} MiB over the run",
                bool(r["ok"]),
            )
        )
    sys.exit(0 if out["ok"] else 1)


if __name__ == "__main__":
    main()
