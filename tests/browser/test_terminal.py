"""The browser terminal in real headless Chromium (Debian's), driven by Playwright.

`terminal.mjs` does the clicking and checking; this starts the server and a pod on each runtime,
and saves the screenshots under $STREAMSRV_ARTIFACTS_DIR (default: artifacts/ in the checkout).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BUSYBOX, RUNTIMES, missing, server_with_pod

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


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_browser_terminal(tmp_path: Path, runtime: str) -> None:
    node = require_browser()
    shots = ARTIFACTS / runtime
    with server_with_pod(tmp_path, MANIFEST, runtime) as server:
        r = subprocess.run(
            [node, str(HERE / "terminal.mjs"), server.url, "webterm", str(shots)],
            capture_output=True, text=True, timeout=240, cwd=HERE,
            env={**os.environ, "STREAMSRV_TOKEN": server.token},
        )  # fmt: skip
        log = server.log.read_text()
    print(r.stdout)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert (shots / "browser-terminal.png").stat().st_size > 10_000
    # The bearer token never reached a URL the server saw (it travels in the fragment only).
    assert server.token not in log
