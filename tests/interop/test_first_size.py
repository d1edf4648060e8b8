"""The first terminal size reaches the process before it can read it, every time.

`kubectl exec -it POD -- stty size` under a pseudo-terminal of a known size must print that
size, never 0x0 (busybox's stty then fails with "stty: standard input"), on kubectl 1.27
(SPDY) and 1.33 (WebSocket v5), on both runtimes, many times over: the size comes from
kubectl only after the session began, so a server that starts the process first loses a race
that a single run can win by luck. Attaching to a tty container applies the client's size
before its input is passed on. Each run uses a size of its own, so a size left over from an
earlier run cannot pass.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.conftest import RUNTIMES, Server, console_pod, kubectl_path, server_with_pod
from tests.ptyproc import PtyProcess

pytestmark = [pytest.mark.docker, pytest.mark.kubectl]

POD = "sizepod"
RUNS = 30
HANG = 60  # seconds: only a hang takes this long
VERSIONS = pytest.mark.parametrize("version", ["1.27", "1.33"])


@pytest.fixture(scope="module", params=RUNTIMES)
def srv(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Server]:
    with server_with_pod(
        tmp_path_factory.mktemp("size"),
        console_pod(POD),
        request.param,
    ) as server:
        yield server


def pty_kubectl(srv: Server, version: str, *args: str, rows: int, cols: int) -> PtyProcess:
    return PtyProcess(
        [kubectl_path(version), "--kubeconfig", str(srv.kubeconfig), "--cache-dir",
         str(srv.state_dir / f"kc-{version}"), *args],
        rows=rows, cols=cols, env={**os.environ, "TERM": "xterm"},
    )  # fmt: skip


def size_of(run: int) -> tuple[int, int]:
    """A size of the run's own: rows 17-63, columns 70-209."""
    return 17 + (run * 7) % 47, 70 + (run * 13) % 140


@VERSIONS
@pytest.mark.parametrize("cmd", [["stty", "size"], ["sh", "-c", "stty size"]], ids=" ".join)
def test_exec_reads_the_clients_size_every_time(srv: Server, version: str, cmd: list[str]) -> None:
    for run in range(RUNS if cmd[0] == "stty" else RUNS // 3):
        rows, cols = size_of(run)
        p = pty_kubectl(
            srv, version, "exec", "-it", POD, "-c", "main", "--", *cmd, rows=rows, cols=cols
        )
        try:
            code = p.wait(HANG)
            # stty prints one line: the size, or an error (busybox's for 0x0: "stty: standard
            # input"); kubectl may add lines of its own (docs/protocol.md §3.3, the race note).
            p.expect(rf"(?m)^{rows} {cols}\r?$", timeout=HANG)
        finally:
            p.close()
        assert code == 0, run


@VERSIONS
def test_attach_applies_the_size_before_input(srv: Server, version: str) -> None:
    for run in range(RUNS // 3):
        rows, cols = size_of(run)
        p = pty_kubectl(srv, version, "attach", "-it", POD, "-c", "console", rows=rows, cols=cols)
        try:
            # typed at once: the shell reads it only once the terminal has the client's size
            p.write(f"stty size; echo mark-$((1000+{run}))\r")
            p.expect(rf"\n{rows} {cols}\r?\n(.*\n)?mark-{1000 + run}", timeout=HANG)
        finally:
            p.close()  # the client leaves; the shell goes on
