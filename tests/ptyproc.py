"""A child process on a real pseudo-terminal, for `kubectl exec -it` and `attach -it` tests."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time


class PtyProcess:
    def __init__(
        self, argv: list[str], rows: int = 24, cols: int = 80, env: dict[str, str] | None = None
    ):
        self.master, slave = os.openpty()
        self.resize(rows, cols)
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            env=env,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        self.output = b""

    def resize(self, rows: int, cols: int) -> None:
        """Like a terminal window changing size: the foreground group gets SIGWINCH."""
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def write(self, text: str) -> None:
        os.write(self.master, text.encode())

    def _read_some(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the child side is closed
            return False
        if not data:
            return False
        self.output += data
        return True

    def expect(self, pattern: str | bytes, timeout: float = 10.0) -> re.Match[bytes]:
        """Wait until ``pattern`` (a regex) appears in the output since the last match."""
        regex = re.compile(pattern.encode() if isinstance(pattern, str) else pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = regex.search(self.output)
            if m:
                self.output = self.output[m.end() :]
                return m
            left = deadline - time.monotonic()
            if left <= 0 or not self._read_some(min(left, 0.2)) and self.proc.poll() is not None:
                raise TimeoutError(f"{pattern!r} not seen; output: {self.output[-2000:]!r}")

    def wait(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read_some(0.1)
        return self.proc.wait(max(0.0, deadline - time.monotonic()) or 0.1)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self.master)
