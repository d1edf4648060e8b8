"""The browser tool in real headless Chromium (Debian's), driven by Playwright.

The ``.mjs`` scripts do the clicking and checking (``terminal.mjs``: sessions in tabs, resize,
exit status, closing, search, copy and paste, a dropped network and Reconnect, read-only;
``tools.mjs``: ``GET /``, the live pods sidebar, logs; ``replay.mjs``: recordings played back);
this starts the server and a pod on each runtime, and saves the screenshots under
$STREAMSRV_ARTIFACTS_DIR/<runtime>/ (default: artifacts/ in the checkout).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BUSYBOX, RUNTIMES, Server, missing, server_with_pod

HERE = Path(__file__).resolve().parent
ARTIFACTS = Path(os.environ.get("STREAMSRV_ARTIFACTS_DIR", HERE.parents[1] / "artifacts"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

MANIFEST = f"""apiVersion: v1
kind: Pod
metadata: {{name: webterm}}
spec:
  containers:
  - {{name: shell, image: {BUSYBOX}, command: ["sleep", "100000"]}}
  - {{name: console, image: {BUSYBOX}, command: ["sh"], stdin: true, tty: true}}
"""

TOOLS_MANIFEST = f"""apiVersion: v1
kind: Pod
metadata: {{name: webtools}}
spec:
  containers:
  - {{name: main, image: {BUSYBOX}, command: ["sleep", "100000"]}}
  - name: ticker
    image: {BUSYBOX}
    command: ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.5; done"]
"""


def require_browser() -> str:
    node = shutil.which("node")
    if node is None:
        missing("node not on PATH (Debian nodejs); run scripts/test")
    if not Path(CHROMIUM).exists():
        missing(f"{CHROMIUM} not found (Debian chromium); run scripts/test")
    if not (HERE / "node_modules" / "playwright-core").is_dir():
        missing("tests/browser/node_modules/playwright-core missing; run scripts/test (npm ci)")
    assert node is not None
    return node


def drive(server: Server, script: str, *args: str) -> str:
    """Run ``node script server.url args...`` with the token in its environment; its output.
    The bearer token never reached a URL the server saw (it travels in the fragment only)."""
    node = require_browser()
    r = subprocess.run(
        [node, str(HERE / script), server.url, *args],
        capture_output=True, text=True, timeout=240, cwd=HERE,
        env={**os.environ, "STREAMSRV_TOKEN": server.token},
    )  # fmt: skip
    print(r.stdout)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert server.token not in server.log.read_text()
    return r.stdout


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_browser_terminal(tmp_path: Path, runtime: str) -> None:
    require_browser()
    shots = ARTIFACTS / runtime
    with server_with_pod(tmp_path, MANIFEST, runtime) as server:
        drive(server, "terminal.mjs", "webterm", str(shots))
    for name in ("browser-terminal.png", "browser-two-tabs.png", "browser-reconnect.png"):
        assert (shots / name).stat().st_size > 10_000, name


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_browser_tools(tmp_path: Path, runtime: str) -> None:
    require_browser()
    shots = ARTIFACTS / runtime
    with server_with_pod(tmp_path, TOOLS_MANIFEST, runtime) as server:
        drive(server, "tools.mjs", "webtools", BUSYBOX, str(shots))
    for name in ("browser-sidebar.png", "browser-logs.png"):
        assert (shots / name).stat().st_size > 10_000, name


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_browser_replay(tmp_path: Path, runtime: str) -> None:
    require_browser()
    shots = ARTIFACTS / runtime
    record = tmp_path / "recordings"
    with server_with_pod(tmp_path, MANIFEST, runtime, extra=["--record", str(record)]) as server:
        drive(server, "replay.mjs", "webterm", str(shots))
    assert (shots / "browser-replay.png").stat().st_size > 10_000
    casts = list(record.rglob("*.cast"))
    assert len(casts) == 1 and b"replay-42" in casts[0].read_bytes()
