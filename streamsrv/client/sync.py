"""A thin synchronous facade over :class:`streamsrv.client.Client`, for scripts without an event
loop: the asyncio client runs on a private loop in one background thread, and each call here
waits for its result there.

```python
from streamsrv.client.sync import SyncClient

with SyncClient.from_kubeconfig() as client:
    print(client.run("web", ["uname", "-a"]).stdout.decode())
    with client.forward("web", {0: 80}) as fw:
        print("local port", fw.ports[80])
```
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from .api import Client
from .config import ClientConfig, load_kubeconfig
from .portforward import Forwarder
from .remotecommand import Completed, Process

T = TypeVar("T")
S = TypeVar("S", bound="_Closing")


class SyncClient:
    """The blocking twin of :class:`~streamsrv.client.Client` (same arguments, same errors)."""

    def __init__(self, config: ClientConfig, **kwargs: Any) -> None:
        self.client = Client(config, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="streamsrv-client", daemon=True
        )
        self._thread.start()
        self._open: set[Process | Forwarder] = set()

    @classmethod
    def from_kubeconfig(
        cls, path: str | os.PathLike[str] | None = None, *, context: str | None = None,
        **kwargs: Any,
    ) -> SyncClient:  # fmt: skip
        return cls(load_kubeconfig(path, context=context), **kwargs)

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the background loop (sessions still open are closed first)."""
        if self._loop.is_closed():
            return

        async def cancel_all() -> None:
            for item in list(self._open):
                await item.close()
            self._open.clear()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_all(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the client's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def run(self, pod: str, command: Sequence[str], **kwargs: Any) -> Completed:
        """:meth:`Client.run <streamsrv.client.Client.run>`: (exit code, stdout, stderr)."""
        return self.call(self.client.run(pod, command, **kwargs))

    def exec(self, pod: str, command: Sequence[str], **kwargs: Any) -> SyncProcess:
        """:meth:`Client.exec <streamsrv.client.Client.exec>` as a :class:`SyncProcess`."""
        return SyncProcess(self, self._track(self.call(self.client.exec(pod, command, **kwargs))))

    def attach(self, pod: str, **kwargs: Any) -> SyncProcess:
        return SyncProcess(self, self._track(self.call(self.client.attach(pod, **kwargs))))

    def forward(self, pod: str, ports: Mapping[int, int], **kwargs: Any) -> SyncForwarder:
        """Listeners that forward to the pod (see :meth:`Client.forward`), started."""
        forwarder = self.call(self.client.forward(pod, ports, **kwargs).start())
        return SyncForwarder(self, self._track(forwarder))

    def _track(self, item: T) -> T:
        """Remember a session or forwarder so that close() can end it."""
        self._open.add(item)  # type: ignore[arg-type]
        return item

    def _forget(self, item: Process | Forwarder) -> None:
        self._open.discard(item)


class _Closing:
    """``with`` closes it."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: S) -> S:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class SyncProcess(_Closing):
    """A running exec/attach session; methods block until done."""

    def __init__(self, owner: SyncClient, process: Process) -> None:
        self._owner, self.process = owner, process
        self.protocol = process.protocol

    def write(self, data: bytes) -> None:
        assert self.process.stdin is not None, "the session has no stdin"
        self._owner.call(self.process.stdin.write(data))

    def close_stdin(self) -> None:
        assert self.process.stdin is not None, "the session has no stdin"
        self._owner.call(self.process.stdin.close())

    def read_stdout(self, n: int = -1) -> bytes:
        """The next chunk of stdout (``b""`` at its end)."""
        assert self.process.stdout is not None, "the session has no stdout"
        return self._owner.call(self.process.stdout.read(n))

    def read_stderr(self, n: int = -1) -> bytes:
        assert self.process.stderr is not None, "the session has no separate stderr"
        return self._owner.call(self.process.stderr.read(n))

    def resize(self, width: int, height: int) -> None:
        self._owner.call(self.process.resize(width, height))

    def wait(self, timeout: float | None = None) -> int:
        """The exit code (read the outputs first, or they fill and stop the command)."""
        return self._owner.call(self.process.wait(), timeout)

    def close(self) -> None:
        self._owner.call(self.process.close())
        self._owner._forget(self.process)


class SyncForwarder(_Closing):
    """Forwarding listeners; ``ports`` maps each remote port to its local one."""

    def __init__(self, owner: SyncClient, forwarder: Forwarder) -> None:
        self._owner, self.forwarder = owner, forwarder
        self.ports = forwarder.ports

    def close(self) -> None:
        self._owner.call(self.forwarder.close())
        self._owner._forget(self.forwarder)


__all__ = ["SyncClient", "SyncForwarder", "SyncProcess"]
