"""Slow readers: a kubectl exec and a kubectl port-forward read at a fixed rate.

``python -m soak.slow [--bytes 1GiB] [--rate 1MB/s] [--runtime process]`` starts
``streamsrv serve`` and a pod, then for each of two sessions:

* **exec**: ``kubectl exec POD -- sh -c 'seq 1 999999999 | head -c N'`` with kubectl's stdout
  piped into a reader that takes ``--rate`` bytes a second;
* **port-forward**: ``kubectl port-forward POD :PORT`` to ``busybox nc -ll -p PORT -e sh -c
  'read n; seq ... | head -c $n'`` in the pod (the client sends N first), the local connection
  read at the same rate;

runs it once with a fast reader (as fast as the bytes come) and once with the slow one. The
bytes are ``seq``'s decimal lines, so every chunk is checked against the pattern as it
arrives (a lost, repeated or reordered chunk shows as the offset of the first mismatch) and
the whole stream's SHA-256 is reported.

Memory: the server's RSS is sampled every second (10 times a second for the fast reader,
which may be done in a second). The fast run measures the session's fixed
cost (peak RSS minus the baseline before it: code paths, buffers of a session in full flow,
allocator arenas); the slow run's peak minus the same baseline must stay within
``--max-buffer`` (16 MiB) plus that measured fixed cost: a server that buffered what the slow
reader had not taken yet would grow by the backlog, about ``N - rate * elapsed``. The curve
is printed (every 10th sample on long runs). At the end the server's descriptors and asyncio
tasks must be back where they started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import re
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soak.common import MIB, Sampler, conclude, free_port, read_rss_kib, row, timestamped
from soak.load import Log, Server, find_kubectl, sleeper_pod, start_sampler

#: The bound on what the server may buffer for one session (on top of its fixed costs).
MAX_BUFFER = 16 * MIB
#: No byte for this long while reading is a hung session.
STALL = 60.0
#: Numbers enough for 8.9 GB of `seq` output: more than any run here asks for.
SEQ_LAST = 999_999_999

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}  # fmt: skip


def parse_size(text: str) -> int:
    """``1GiB``, ``256MiB``, ``1MB`` (10^6), ``4MB/s``, ``65536`` -> bytes."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*(?:/s)?\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (e.g. 1GiB, 256MiB, 1MB, 4MB/s)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def mib(kib: float) -> float:
    """KiB -> MiB, one decimal."""
    return round(kib / 1024, 1)


def generator_command(nbytes: int | str) -> str:
    return f"seq 1 {SEQ_LAST} | head -c {nbytes}"


#: The pod's port-forward listener: the client sends how many bytes it wants, then reads them.
LISTENER_SCRIPT = f"read n; {generator_command('$n')}"


class PatternCheck:
    """Checks a stream against ``seq 1 ...``'s output cut at ``expected`` bytes, chunk by chunk.

    The expected bytes come from the same command run on this host (Python's own ``str`` of
    every number is slower than kubectl), compared as each chunk arrives; use as an async
    context manager (the generator is killed at the end).
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.received = 0
        self.first_mismatch: int | None = None
        self.sha256 = hashlib.sha256()
        self._gen: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> PatternCheck:
        self._gen = await asyncio.create_subprocess_exec(
            "sh", "-c", generator_command(self.expected),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        gen, self._gen = self._gen, None
        if gen is not None:
            if gen.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    gen.kill()
            assert gen.stdout is not None
            await gen.stdout.read()
            await gen.wait()

    async def feed(self, data: bytes) -> None:
        self.sha256.update(data)
        if self.first_mismatch is None:
            assert self._gen is not None and self._gen.stdout is not None
            try:
                want = await self._gen.stdout.readexactly(len(data))
            except asyncio.IncompleteReadError as exc:
                want = exc.partial
            if want != data:
                for i, (a, b) in enumerate(zip(want, data, strict=False)):
                    if a != b:
                        self.first_mismatch = self.received + i
                        break
                else:  # one is a prefix of the other: more bytes than expected
                    self.first_mismatch = self.received + len(want)
        self.received += len(data)

    @property
    def complete(self) -> bool:
        return self.first_mismatch is None and self.received == self.expected


async def paced_read(
    read: Callable[[int], Awaitable[bytes]], check: PatternCheck, rate: float | None
) -> tuple[float, str]:
    """Read to EOF at ``rate`` bytes/s (None: as fast as it comes); seconds taken and an
    error ('' if EOF came)."""
    chunk = 65536 if rate is None else max(4096, min(65536, int(rate / 20)))
    start = time.monotonic()
    while True:
        try:
            data = await asyncio.wait_for(read(chunk), STALL)
        except TimeoutError:
            return time.monotonic() - start, f"stalled: no byte for {STALL:g} s"
        except OSError as exc:
            return time.monotonic() - start, repr(exc)
        if not data:
            return time.monotonic() - start, ""
        await check.feed(data)
        if rate is not None:
            ahead = start + check.received / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)


@dataclass
class Transfer:
    """One session's figures."""

    mode: str
    rate: float | None
    nbytes: int
    seconds: float = 0.0
    error: str = ""
    check: PatternCheck | None = None
    baseline_kib: int = 0
    before_kib: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)
    kubectl_stderr: str = ""

    @property
    def peak_kib(self) -> int:
        return max((kib for _, kib in self.samples), default=self.before_kib)

    @property
    def growth_bytes(self) -> int:
        """Peak RSS minus the mode's baseline (taken before its fast run)."""
        return (self.peak_kib - self.baseline_kib) * 1024

    @property
    def ok(self) -> bool:
        return not self.error and self.check is not None and self.check.complete

    def as_dict(self) -> dict[str, Any]:
        c = self.check
        return {
            "mode": self.mode,
            "reader": "fast" if self.rate is None else f"{self.rate:g} B/s",
            "bytes_expected": self.nbytes,
            "bytes_received": c.received if c else 0,
            "pattern_ok": bool(c and c.complete),
            "first_mismatch": c.first_mismatch if c else None,
            "sha256": c.sha256.hexdigest() if c else "",
            "seconds": round(self.seconds, 1),
            "mb_per_s": round((c.received if c else 0) / max(self.seconds, 1e-9) / 1e6, 2),
            "error": self.error,
            "rss_baseline_mib": mib(self.baseline_kib),
            "rss_before_mib": mib(self.before_kib),
            "rss_peak_mib": mib(self.peak_kib),
            "growth_mib": round(self.growth_bytes / MIB, 1),
            "growth_in_run_mib": mib(self.peak_kib - self.before_kib),
            "kubectl_stderr": self.kubectl_stderr[-500:],
        }


async def _drain(stream: asyncio.StreamReader | None, into: list[bytes]) -> None:
    if stream is not None:
        while data := await stream.read(65536):
            into.append(data)


async def _finish(proc: asyncio.subprocess.Process, within: float) -> int | None:
    """Wait for ``proc`` (killing it after ``within`` s); its exit status."""
    try:
        return await asyncio.wait_for(proc.wait(), within)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return None


async def exec_transfer(server: Server, pod: str, t: Transfer) -> None:
    """kubectl exec's stdout read at ``t.rate``."""
    t.check = PatternCheck(t.nbytes)
    proc = await asyncio.create_subprocess_exec(
        *server.kubectl_argv("exec", pod, "--", "sh", "-c", generator_command(t.nbytes)),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    err: list[bytes] = []
    drain = asyncio.create_task(_drain(proc.stderr, err))
    try:
        assert proc.stdout is not None
        async with t.check:
            t.seconds, t.error = await paced_read(proc.stdout.read, t.check, t.rate)
    finally:
        code = await _finish(proc, 30)
        await drain
        t.kubectl_stderr = b"".join(err).decode(errors="replace").strip()
    if not t.error and code != 0:
        t.error = f"kubectl exec exited {code}"


FORWARDING = re.compile(rb"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)")


async def portforward_transfer(server: Server, pod: str, port: int, t: Transfer) -> None:
    """One connection through kubectl port-forward, read at ``t.rate``."""
    t.check = PatternCheck(t.nbytes)
    proc = await asyncio.create_subprocess_exec(
        *server.kubectl_argv("port-forward", f"pod/{pod}", f":{port}"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out: list[bytes] = []
    err: list[bytes] = []
    drains = [
        asyncio.create_task(_drain(proc.stdout, out)),
        asyncio.create_task(_drain(proc.stderr, err)),
    ]
    try:
        local = await _forwarded_port(proc, out, port)
        reader, writer = await asyncio.open_connection("127.0.0.1", local)
        try:
            writer.write(b"%d\n" % t.nbytes)
            async with t.check:
                t.seconds, t.error = await paced_read(reader.read, t.check, t.rate)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    except RuntimeError as exc:
        t.error = str(exc)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await _finish(proc, 10)
        await asyncio.gather(*drains)
        t.kubectl_stderr = b"".join(err).decode(errors="replace").strip()


async def _forwarded_port(proc: asyncio.subprocess.Process, out: list[bytes], port: int) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for local, remote in FORWARDING.findall(b"".join(out)):
            if int(remote) == port:
                return int(local)
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.05)
    raise RuntimeError(f"kubectl port-forward did not forward: {b''.join(out)[-500:]!r}")


# ------------------------------------------------------------------------------- the run


def curve(samples: Sequence[tuple[float, int]], baseline_kib: int) -> str:
    """RSS minus baseline, MiB, over time, compressed: every 10th sample (fewer on runs
    past 600 samples, about 60 points; more on short runs, about 10), the peak marked *."""
    if not samples:
        return "(no samples)"
    n = len(samples)
    step = max(1, n // 10) if n < 100 else (10 if n <= 600 else -(-n // 60))
    peak = max(range(len(samples)), key=lambda i: samples[i][1])
    keep = sorted({*range(0, len(samples), step), peak, len(samples) - 1})
    return " ".join(
        f"{samples[i][0]:.0f}s:{(samples[i][1] - baseline_kib) / 1024:+.1f}"
        + ("*" if i == peak else "")
        for i in keep
    )


async def _measured(
    server: Server, mode: str, t: Transfer, go: Callable[[Transfer], Awaitable[None]], log: Log
) -> Transfer:
    t.before_kib = read_rss_kib(server.pid)
    # Every second for the slow reader; a fast one may be done in a second: 10 a second.
    sampler: Sampler = start_sampler(server, 1.0 if t.rate is not None else 0.1)
    try:
        await go(t)
    finally:
        await asyncio.to_thread(sampler.stop)
    t.samples = sampler.rss_samples
    reader = "fast" if t.rate is None else f"{t.rate / 1e6:g} MB/s"
    log(
        f"{mode} {reader}: {t.check.received if t.check else 0} bytes in {t.seconds:.1f} s, "
        f"pattern {'ok' if t.check and t.check.complete else 'BROKEN'}"
        f"{', ' + t.error if t.error else ''}; RSS peak {mib(t.peak_kib)} MiB "
        f"(+{t.growth_bytes / MIB:.1f} MiB over the baseline)"
    )
    if t.rate is not None:
        log(f"  RSS curve (s: MiB over the baseline, * peak): {curve(t.samples, t.baseline_kib)}")
    return t


async def run(
    *,
    nbytes: int = 1 << 30,
    rate: float = 1e6,
    runtime: str = "process",
    kubectl: str | None = None,
    modes: Sequence[str] = ("exec", "portforward"),
    fast_bytes: int | None = None,
    max_buffer: int = MAX_BUFFER,
    settle: float = 30.0,
    state_dir: Path | None = None,
    log: Log = lambda _: None,
) -> dict[str, Any]:
    """The slow-reader run; every figure in a dict (see the module docstring)."""
    kubectl = kubectl or find_kubectl()
    if kubectl is None:
        raise RuntimeError("kubectl not found on PATH")
    with contextlib.ExitStack() as stack:
        if state_dir is None:
            state_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-slow-")))
        server = Server(state_dir, runtime=runtime, kubectl=kubectl)
        await server.astart()
        try:
            return await _run(server, nbytes, rate, modes, fast_bytes or nbytes, max_buffer,
                              settle, log)  # fmt: skip
        finally:
            code = await server.astop()
            log(f"server stopped (exit status {code})")


async def _run(
    server: Server,
    nbytes: int,
    rate: float,
    modes: Sequence[str],
    fast_bytes: int,
    max_buffer: int,
    settle: float,
    log: Log,
) -> dict[str, Any]:
    port = free_port()
    pod = "slow"
    listener = ["busybox", "nc", "-ll", "-p", str(port), "-e", "sh", "-c"]
    await server.arun_pod(sleeper_pod(pod, server.runtime, [*listener, LISTENER_SCRIPT]))
    log(f"server {server.url} (pid {server.pid}), pod {pod}, its listener on port {port}")
    result: dict[str, Any] = {
        "runtime": server.runtime,
        "kubectl": server.kubectl_bin,
        "bytes": nbytes,
        "fast_bytes": fast_bytes,
        "rate_bytes_per_s": rate,
        "max_buffer_mib": max_buffer / MIB,
        "server_log": str(server.log),
    }

    async def do_exec(t: Transfer) -> None:
        await exec_transfer(server, pod, t)

    async def do_portforward(t: Transfer) -> None:
        await portforward_transfer(server, pod, port, t)

    sessions = {"exec": do_exec, "portforward": do_portforward}
    # Warm up: each code path once with a small transfer (imports, first allocations).
    for mode in modes:
        warm = Transfer(mode, None, 1 << 20)
        await sessions[mode](warm)
        if not warm.ok:
            raise RuntimeError(f"{mode} warm-up failed: {warm.as_dict()}")
    before = await server.figures()
    result["before"] = before
    log(f"before: {before}")

    result["sessions"] = {}
    for mode in modes:
        go = sessions[mode]
        await server.settle(before, settle)
        baseline = read_rss_kib(server.pid)
        fast = Transfer(mode, None, fast_bytes)
        fast.baseline_kib = baseline
        await _measured(server, mode, fast, go, log)
        await server.settle(before, settle)
        slow = Transfer(mode, rate, nbytes)
        slow.baseline_kib = baseline
        await _measured(server, mode, slow, go, log)
        fixed = max(0, fast.growth_bytes)
        bound = max_buffer + fixed
        within = slow.growth_bytes <= bound
        result["sessions"][mode] = {
            "fast": fast.as_dict(),
            "slow": slow.as_dict(),
            "fixed_cost_mib": round(fixed / MIB, 1),
            "bound_mib": round(bound / MIB, 1),
            "within_bound": within,
            "ok": fast.ok and slow.ok and within,
            "curve": curve(slow.samples, baseline),
        }
        log(
            f"{mode}: slow reader grew the server by {slow.growth_bytes / MIB:.1f} MiB; bound "
            f"{max_buffer / MIB:g} MiB + fixed cost {fixed / MIB:.1f} MiB = {bound / MIB:.1f} "
            f"MiB: {'within' if within else 'EXCEEDED'}"
        )
    after, took = await server.settle(before, settle)
    result["after"] = after
    result["settle_s"] = round(took, 1)
    result["back_to_baseline"] = all(after[k] <= before[k] for k in ("fds", "tasks"))
    log(f"after ({took:.1f} s settle): {after}")
    return result


# ------------------------------------------------------------------------- command line


def report(result: dict[str, Any]) -> list[str]:
    lines = [
        f"runtime {result['runtime']}, kubectl {result['kubectl']}: {result['bytes']} bytes, "
        f"slow reader at {result['rate_bytes_per_s'] / 1e6:g} MB/s "
        f"(fast reader: {result['fast_bytes']} bytes)"
    ]
    for mode, s in result["sessions"].items():
        for kind in ("fast", "slow"):
            t = s[kind]
            lines.append(
                f"{mode} {kind}: {t['bytes_received']}/{t['bytes_expected']} bytes, pattern "
                f"{'ok' if t['pattern_ok'] else 'BROKEN at ' + str(t['first_mismatch'])}, "
                f"sha256 {t['sha256'][:16]}…, {t['seconds']} s ({t['mb_per_s']} MB/s)"
                f"{', error: ' + t['error'] if t['error'] else ''}; server RSS baseline "
                f"{t['rss_baseline_mib']} MiB, peak {t['rss_peak_mib']} MiB "
                f"(+{t['growth_mib']} MiB; +{t['growth_in_run_mib']} MiB within this run)"
            )
        lines.append(
            f"{mode}: fixed cost (fast reader's growth) {s['fixed_cost_mib']} MiB; slow reader's "
            f"growth {s['slow']['growth_mib']} MiB <= {result['max_buffer_mib']:g} + "
            f"{s['fixed_cost_mib']} = {s['bound_mib']} MiB: "
            + ("yes" if s["within_bound"] else "NO")
        )
        lines.append(f"  RSS curve (s: MiB over the baseline, * peak): {s['curve']}")
    b, a = result["before"], result["after"]
    lines.append(
        f"fds {b['fds']} -> {a['fds']}, tasks {b['tasks']} -> {a['tasks']} (after "
        f"{result['settle_s']} s settle): "
        + ("back to baseline" if result["back_to_baseline"] else "NOT back to baseline")
    )
    return lines


def passed(result: dict[str, Any]) -> bool:
    return bool(result["back_to_baseline"] and all(s["ok"] for s in result["sessions"].values()))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m soak.slow", description=__doc__.split("\n")[0])
    p.add_argument("--bytes", default="1GiB", help="bytes per session (1GiB)")
    p.add_argument("--rate", default="1MB/s", help="the slow reader's rate (1MB/s)")
    p.add_argument("--fast-bytes", help="bytes for the fast reader (default: --bytes)")
    p.add_argument("--runtime", choices=["process", "docker"], default="process")
    p.add_argument("--kubectl", help="kubectl binary (default: the one on PATH)")
    p.add_argument("--mode", choices=["exec", "portforward", "both"], default="both", help="(both)")
    p.add_argument("--max-buffer", default="16MiB", help="allowed buffering (16MiB)")
    p.add_argument("--state-dir", type=Path, help="keep the server's state (and log) here")
    p.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = p.parse_args(argv)
    modes = ["exec", "portforward"] if args.mode == "both" else [args.mode]
    result = asyncio.run(
        run(
            nbytes=parse_size(args.bytes),
            rate=float(parse_size(args.rate)),
            runtime=args.runtime,
            kubectl=args.kubectl,
            modes=modes,
            fast_bytes=parse_size(args.fast_bytes) if args.fast_bytes else None,
            max_buffer=parse_size(args.max_buffer),
            state_dir=args.state_dir,
            log=timestamped,
        )
    )
    return conclude(result, report(result), soak_rows(result), passed(result), as_json=args.json)


def soak_rows(result: dict[str, Any]) -> list[str]:
    """Each session of the run as a line of docs/reliability.md's table."""
    rows = []
    b, a = result["before"], result["after"]
    for mode, s in result["sessions"].items():
        t = s["slow"]
        rows.append(
            row(
                f"slow reader: {mode} ({result['runtime']}, kubectl {result['kubectl']})",
                f"{t['bytes_expected'] / MIB:.0f} MiB read at "
                f"{result['rate_bytes_per_s'] / 1e6:g} MB/s ({t['seconds']} s)",
                "a reader slower than the producer",
                f"{t['bytes_expected'] - t['bytes_received']} bytes "
                f"({'pattern and sha256 equal' if t['pattern_ok'] else 'PATTERN BROKEN'})",
                f"server RSS +{t['growth_mib']} MiB at most (bound {s['bound_mib']} MiB = "
                f"{result['max_buffer_mib']:g} + fixed cost {s['fixed_cost_mib']}); fds "
                f"{b['fds']} -> {a['fds']}, tasks {b['tasks']} -> {a['tasks']}",
                bool(s["ok"] and result["back_to_baseline"]),
            )
        )
    return rows


if __name__ == "__main__":
    sys.exit(main())
