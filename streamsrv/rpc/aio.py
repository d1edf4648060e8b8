"""What our gRPC server's and client's asyncio protocols share (docs/cri.md)."""

from __future__ import annotations

import asyncio


class ReadsWhileHeard(asyncio.Protocol):
    """A connection that reads nothing while the peer does not read what we send: everything
    we send answers something it sent (a call, a PING, SETTINGS), so a peer that only writes
    cannot make our send buffer grow."""

    transport: asyncio.Transport | None = None

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
