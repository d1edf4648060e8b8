"""``python -m streamsrv.client``: exec and port-forward from the command line, like kubectl.

    python -m streamsrv.client [--kubeconfig F] [--context C] [-n NS] exec [-i] [-t] [-c C] POD -- CMD...
    python -m streamsrv.client [...] port-forward POD [LOCAL:]REMOTE...

``exec`` copies this process's stdin to the command (``-i``; its end ends the command's input),
the command's stdout and stderr to ours, and exits with the command's exit code (1 with a
message for an error that is not an exit code). With ``-t`` and a terminal on stdin, the terminal
is put in raw mode and its size follows SIGWINCH.
"""  # noqa: E501

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import stat
import sys
import termios
import tty
from collections.abc import Iterator

from . import Client, ClientError
from .remotecommand import Process
from .streams import ByteStream

READ = 1 << 20


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m streamsrv.client")
    p.add_argument("--kubeconfig", help="kubeconfig file (default $KUBECONFIG or ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context (default the current one)")
    p.add_argument("-n", "--namespace", help="namespace (default the context's)")
    sub = p.add_subparsers(dest="verb", required=True)
    e = sub.add_parser("exec", help="run a command in a container")
    e.add_argument("-i", "--stdin", action="store_true", help="pass stdin to the command")
    e.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    e.add_argument("-c", "--container", help="container name")
    e.add_argument("pod")
    e.add_argument("command", nargs="+")
    f = sub.add_parser("port-forward", help="forward local ports to a pod")
    f.add_argument("pod")
    f.add_argument("ports", nargs="+", help="[LOCAL:]REMOTE (LOCAL 0 or empty: any free port)")
    return p


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _keep_freed_memory() -> None:
    """Ask glibc to keep freed memory instead of returning it at once.

    Each message of a stream allocates and frees a few buffers of up to 1 MiB (the frame, its
    mask, the TLS record); glibc's defaults hand that memory back to the kernel and fault it in
    again, which cost more system time than the copying itself (about 1.2 CPU-s per 512 MiB of
    stdin, docs/client.md). This is a setting of this process, the command-line program's own:
    the library leaves the allocator of a program that embeds it alone.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        libc.mallopt(m_mmap_threshold, 16 << 20)
        libc.mallopt(m_trim_threshold, 64 << 20)
        libc.mallopt(m_top_pad, 16 << 20)


def _grow_pipe(fd: int) -> None:
    """A 1 MiB pipe buffer when ``fd`` is a pipe (Linux): fewer blocked writes, fewer wakeups."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)


async def _copy_out(stream: ByteStream | None, fd: int) -> None:
    if stream is None:
        return
    _grow_pipe(fd)
    async for chunk in stream:
        view = memoryview(chunk)
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:  # a non-blocking pipe that is full
                await asyncio.sleep(0.001)


async def _copy_in(process: Process) -> None:
    """stdin to the command: a regular file is read directly (it never blocks for long), a pipe
    or terminal through the event loop; no thread either way."""
    assert process.stdin is not None
    if stat.S_ISREG(os.fstat(0).st_mode):
        while data := os.read(0, READ):
            await process.stdin.write(data)
    else:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READ)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader),
            os.fdopen(0, "rb", buffering=0, closefd=False),
        )
        try:
            while data := await reader.read(READ):
                await process.stdin.write(data)
        finally:
            transport.close()
    await process.stdin.close()


async def _exec(client: Client, args: argparse.Namespace) -> int:
    raw = args.tty and os.isatty(0)
    size = shutil.get_terminal_size() if raw else None
    process = await client.exec(
        args.pod, args.command, namespace=args.namespace, container=args.container,
        stdin=args.stdin, tty=args.tty, size=(size.columns, size.lines) if size else None,
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    async with process:
        if raw:

            def resized() -> None:
                now = shutil.get_terminal_size()
                loop.create_task(process.resize(now.columns, now.lines))

            loop.add_signal_handler(signal.SIGWINCH, resized)
        feeder = loop.create_task(_copy_in(process)) if args.stdin else None
        try:
            with _raw_terminal(0) if raw else contextlib.nullcontext():
                await asyncio.gather(_copy_out(process.stdout, 1), _copy_out(process.stderr, 2))
                return await process.wait()
        finally:
            if feeder is not None:
                feeder.cancel()  # a read already in the executor finishes on its own


async def _forward(client: Client, args: argparse.Namespace) -> int:
    mapping: dict[int, int] = {}
    for spec in args.ports:
        local, _, remote = spec.rpartition(":")
        mapping[int(local or 0) if _ else int(remote)] = int(remote)
    async with client.forward(args.pod, mapping, namespace=args.namespace) as fw:
        for remote, local in fw.ports.items():
            print(f"Forwarding from 127.0.0.1:{local} -> {remote}", flush=True)
        await asyncio.Event().wait()
    return 0


async def _main(args: argparse.Namespace) -> int:
    client = Client.from_kubeconfig(args.kubeconfig, context=args.context)
    if args.verb == "exec":
        return await _exec(client, args)
    return await _forward(client, args)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _keep_freed_memory()
    try:
        return asyncio.run(_main(args))
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
