"""Benchmark clients: the official `kubernetes` Python client, and many idle shells at once.

pyclient.py KUBECONFIG stdout SIZE CMD    run `sh -c CMD`, check it wrote SIZE bytes
pyclient.py KUBECONFIG stdin SIZE CMD     send SIZE zero bytes to `sh -c CMD`
pyclient.py KUBECONFIG shells N PID [C,..] open N idle `sh -i` sessions (tty) over WebSocket v5
                                          (in turn in containers C, by default main), check
                                          each answers, print "ALIVE PEAK_RSS_KIB" of PID
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script by the bench
from soak.common import read_rss_kib as rss_kib  # noqa: E402

POD = "bench"


def core(kubeconfig: str):  # type: ignore[no-untyped-def]
    from kubernetes import client, config

    return client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))  # type: ignore[no-untyped-call]


def exec_stream(api, cmd: str, stdin: bool):  # type: ignore[no-untyped-def]
    from kubernetes.stream import stream

    return stream(
        api.connect_get_namespaced_pod_exec, POD, "default", container="main",
        command=["sh", "-c", cmd], stdin=stdin, stdout=True, stderr=True, tty=False,
        _preload_content=False, binary=True,
    )  # fmt: skip


def run_stdout(kubeconfig: str, size: int, cmd: str) -> None:
    resp = exec_stream(core(kubeconfig), cmd, False)
    total = 0
    while resp.is_open():
        resp.update(timeout=1)
        total += len(resp.read_stdout(timeout=0))
    total += len(resp.read_stdout(timeout=0))
    resp.close()
    assert resp.returncode == 0, resp.returncode
    assert total == size, f"{total} bytes, expected {size}"


def run_stdin(kubeconfig: str, size: int, cmd: str) -> None:
    resp = exec_stream(core(kubeconfig), cmd, True)
    block = bytes(1 << 20)
    for _ in range(size // len(block)):
        resp.write_stdin(block)
    resp.close_channel(0)
    while resp.is_open():
        resp.update(timeout=1)
    resp.close()
    assert resp.returncode == 0, resp.returncode


async def shells(kubeconfig: str, n: int, pid: int, doc: dict, containers: list[str]) -> None:  # type: ignore[type-arg]
    import aiohttp

    url = doc["clusters"][0]["cluster"]["server"]
    token = doc["users"][0]["user"]["token"]
    ctx = ssl.create_default_context(cafile=str(Path(kubeconfig).parent / "ca.crt"))
    paths = [
        f"{url}/api/v1/namespaces/default/pods/{POD}/exec?container={c}&command=sh"
        "&command=-i&stdin=true&stdout=true&tty=true"
        for c in containers
    ]
    limit = asyncio.Semaphore(25)
    conn = aiohttp.TCPConnector(limit=0, ssl=ctx)
    async with aiohttp.ClientSession(
        connector=conn, headers={"Authorization": f"Bearer {token}"}
    ) as session:

        async def open_one(i: int) -> aiohttp.ClientWebSocketResponse:
            async with limit:
                path = paths[i % len(paths)]
                ws = await session.ws_connect(path, protocols=["v5.channel.k8s.io"], heartbeat=None)
                await ws.send_bytes(b'\x04{"Width":80,"Height":24}')
                return ws

        async def alive(i: int, ws: aiohttp.ClientWebSocketResponse) -> bool:
            mark = f"alive-{i}-$((1+1))\r".encode()
            await ws.send_bytes(b"\x00echo " + mark)
            want = f"alive-{i}-2".encode()
            seen = b""
            try:
                async with asyncio.timeout(60):
                    while want not in seen:
                        msg = await ws.receive()
                        if msg.type != aiohttp.WSMsgType.BINARY:
                            return False
                        seen = (seen + msg.data[1:])[-4096:]
            except TimeoutError:
                return False
            return True

        sockets = await asyncio.gather(*(open_one(i) for i in range(n)))
        checks = await asyncio.gather(*(alive(i, ws) for i, ws in enumerate(sockets)))
        await asyncio.sleep(float(os.environ.get("BENCH_IDLE", "2")))  # idle
        peak = rss_kib(pid)
        for ws in sockets:
            with contextlib.suppress(aiohttp.ClientError):  # a session that has ended
                await ws.send_bytes(b"\x00exit\r")
        await asyncio.gather(*(ws.close() for ws in sockets))
    print(sum(checks), peak)


def main() -> None:
    kubeconfig, mode, *args = sys.argv[1:]
    if mode == "stdout":
        run_stdout(kubeconfig, int(args[0]), args[1])
    elif mode == "stdin":
        run_stdin(kubeconfig, int(args[0]), args[1])
    elif mode == "shells":
        doc = yaml.safe_load(Path(kubeconfig).read_text())
        containers = args[2].split(",") if len(args) > 2 else ["main"]
        asyncio.run(shells(kubeconfig, int(args[0]), int(args[1]), doc, containers))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
