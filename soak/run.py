"""Run every soak mode and print one Markdown table (``scripts/soak`` calls this).

Each mode is its own module, run as a subprocess (``python -m soak.<mode> ...``) so that one
that crashes or hangs cannot take the others with it; a mode prints its table rows as lines
starting with ``ROW | `` (``soak.common.row``) and exits non-zero when a check failed.
Output goes to ``artifacts/soak/<mode>.log``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: mode -> (full-size arguments, quick arguments). The full sizes are the issue's.
MODES: dict[str, tuple[list[str], list[str]]] = {
    "fuzz": (
        ["--frames", "1000000", "--canary-bytes", str(1 << 30), "--time-limit", "1200"],
        ["--frames", "20000", "--canary-bytes", str(32 << 20), "--time-limit", "120"],
    ),
    "kills": (["--clients", "1000"], ["--clients", "40"]),
    "slow": (["--bytes", "1GiB", "--rate", "1MB/s"], ["--bytes", "32MiB", "--rate", "4MB/s"]),
    "load": (
        ["--idle", "2000", "--slowloris", "1000", "--concurrent", "200"],
        ["--idle", "200", "--slowloris", "100", "--concurrent", "30"],
    ),
    "integrity": (
        ["--stdout", "4GiB", "--stdin", "1GiB", "--forward", "1GiB"],
        ["--stdout", "64MiB", "--stdin", "32MiB", "--forward", "32MiB"],
    ),
}
#: Modes that also run on the Docker engine (``--runtime docker``) when one answers.
DOCKER_TOO = ("kills", "integrity")
BACKGROUND = ("slow",)
HEADER = "| run | load held | faults / bad inputs | lost | bounds observed | result |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (minutes, not an hour)")
    ap.add_argument("--only", default="", help="comma-separated modes (default: all)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per mode run")
    args = ap.parse_args()
    wanted = [m for m in args.only.split(",") if m] or list(MODES)
    logs = ROOT / "artifacts" / "soak"
    logs.mkdir(parents=True, exist_ok=True)
    runs: list[tuple[str, list[str]]] = []
    for mode in wanted:
        full, quick = MODES[mode]
        argv = quick if args.quick else full
        runs.append((mode, argv))
        if mode in DOCKER_TOO and os.environ.get("DOCKER_HOST"):
            runs.append((mode, [*argv, "--runtime", "docker"]))
    rows: list[str] = []
    failed: list[str] = []

    def start(mode: str, argv: list[str]) -> tuple[str, subprocess.Popen[bytes], float]:
        name = mode + ("-docker" if "docker" in argv else "")
        print(f"[soak] {name}: python -m soak.{mode} {' '.join(argv)}", flush=True)
        with (logs / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", f"soak.{mode}", *argv],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return name, proc, time.monotonic()

    def finish(name: str, proc: subprocess.Popen[bytes], began: float) -> None:
        try:
            code = proc.wait(max(1.0, args.timeout - (time.monotonic() - began)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = -1
        took = time.monotonic() - began
        log = logs / f"{name}.log"
        text = log.read_text(errors="replace")
        got = [ln.removeprefix("ROW ") for ln in text.splitlines() if ln.startswith("ROW | ")]
        rows.extend(got)
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"[soak] {name}: {status} in {took:.0f} s ({log})", flush=True)
        if code != 0:
            failed.append(name)
            if not got:
                rows.append(f"| {name} | | | | | FAILED (exit {code}, see {log.name}) |")

    # The slow readers spend most of their time waiting (1 MB/s for 1 GiB is 17 minutes a
    # direction) on a server of their own: they run beside the other modes.
    background = [start(m, a) for m, a in runs if m in BACKGROUND]
    for mode, argv in runs:
        if mode not in BACKGROUND:
            finish(*start(mode, argv))
    for job in background:
        finish(*job)
    print()
    print(HEADER)
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(row)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
