"""Short versions of the soak runs (``soak/load.py``, ``soak/slow.py``) for CI.

A live ``streamsrv serve`` on the process runtime, driven by the kubectl on PATH:

* 200 idle and 100 slowloris TLS connections are held (the server's header timeout, 5 s here,
  must close every one of them, none sooner than half of it) while ``kubectl exec`` still
  completes, then 30 execs start at once: each succeeds, or fails with a clear HTTP 429 or 503
  in its stderr; none may hang (a 30 s bound per exec, never a tight wall-clock assertion);
* a slow reader takes 32 MiB at 4 MB/s from ``kubectl exec`` and from ``kubectl
  port-forward``: every byte arrives in order (checked against the generator's pattern), and
  the server's RSS never grows past its baseline by more than 16 MiB plus the session's fixed
  cost, which a fast reader of the same 32 MiB measures first (and which must itself stay
  under 16 MiB: so at most 32 MiB in all, less than what an unbounded buffer would hold);
* after each, the server's file descriptors and asyncio tasks are back at their baseline.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from soak import load, slow
from tests.conftest import missing, require_runtime

pytestmark = pytest.mark.kubectl

MIB = 1024 * 1024
HEADER_TIMEOUT = 5.0
HANG_BOUND = 30.0


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        missing("kubectl not on PATH")
    assert found is not None
    return found


async def test_exec_under_held_connections_and_a_burst(tmp_path: Path) -> None:
    result = await load.run(
        idle=200,
        slowloris=100,
        concurrent=30,
        runtime="process",
        kubectl=kubectl(),
        header_timeout=HEADER_TIMEOUT,
        exec_timeout=HANG_BOUND,
        settle=30,
        state_dir=tmp_path / "state",
    )
    text = "\n".join(load.report(result))
    held = result["held"]
    assert held["failed_to_open"] == 0, text
    # The header timeout closes every connection, the idle and the dripping ones alike (how
    # many were still open when the exec started depends on how fast this machine opens them).
    assert held["all_closed_by_server"], text
    for kind, count in (("idle", 200), ("slowloris", 100)):
        assert held[kind]["opened"] == count, text
        assert held[kind]["closed_by_server"] == count, text
        assert held[kind]["closed_after_s"]["min"] >= HEADER_TIMEOUT / 2, text
    # kubectl exec completed while they were held (the 2 s target is the soak run's to report).
    under_load = result["exec_under_load"]
    assert under_load[0]["held"] > 0, text
    assert all(s["result"] == "ok" for s in under_load), text
    burst = result["concurrent"]
    assert burst["hung"] == 0, text
    assert burst["other"] == 0, text
    assert burst["ok"] + burst["429"] + burst["503"] == 30, text
    assert result["back_to_baseline"], text
    assert result["connections_gauge_back"], text


async def test_slow_reader_gets_every_byte_and_the_server_stays_bounded(tmp_path: Path) -> None:
    require_runtime("process")  # the pod's listener is `busybox nc`
    result = await slow.run(
        nbytes=32 * MIB,
        rate=4e6,
        runtime="process",
        kubectl=kubectl(),
        settle=30,
        state_dir=tmp_path / "state",
    )
    text = "\n".join(slow.report(result))
    assert set(result["sessions"]) == {"exec", "portforward"}, text
    for session in result["sessions"].values():
        for kind in ("fast", "slow"):
            t = session[kind]
            assert not t["error"], text
            assert t["bytes_received"] == 32 * MIB, text
            assert t["pattern_ok"], text
        assert session["fast"]["sha256"] == session["slow"]["sha256"], text
        assert session["fixed_cost_mib"] <= 16, text
        assert session["slow"]["growth_mib"] <= 16 + session["fixed_cost_mib"], text
        assert session["within_bound"], text
    assert result["back_to_baseline"], text
