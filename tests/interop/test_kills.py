"""Short version of `scripts/soak`'s kills mode: kubectl clients (exec flooding stdout, exec
sleeping, attach, port-forward mid-download; kubectl 1.27-1.33) killed with SIGKILL at random
moments leave no process in the pod, and the server's fds and tasks return to their baseline."""

from __future__ import annotations

from pathlib import Path

import pytest

from soak import kills
from tests.conftest import RUNTIMES, kubectl_path, require_runtime

pytestmark = [pytest.mark.docker, pytest.mark.kubectl]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_kubectl_killed_at_random_moments_leaves_nothing(runtime: str, tmp_path: Path) -> None:
    require_runtime(runtime)
    kubectl_path("1.33")  # fails in CI when the kubectls are missing
    extra = []
    if runtime == "containerd":
        from tests import ctd_runtime

        extra = ctd_runtime.namespace().args()
    out = kills.run(
        clients=28, parallel=7, runtime=runtime, seed=3, state_dir=tmp_path, extra=extra
    )
    assert out["by_kind"] == {k: 7 for k in kills.KINDS}, out
    assert out["left_in_pod"] == 0, out["left"]
    assert out["server_alive"] and out["health_failures"] == 0, out
    assert out["fds"][2] <= out["fds"][1] + 2 and out["tasks"][1] <= out["tasks"][0] + 2, out
    assert out["ok"], out
