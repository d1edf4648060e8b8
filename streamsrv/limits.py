"""Every bound the stream server keeps, in one place, with its default and its meaning.

A reader looking for "how much can one peer make us hold, and for how long" reads this file;
docs/architecture.md ("Limits") has the same table with what happens at each limit. Each limit
is enforced by the code named in its comment and has a test that goes past it.
``streamsrv serve`` exposes the tunable ones as flags (``--idle-timeout`` and so on).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

KIB = 1024
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on time, memory and concurrency per peer; defaults suit kubectl and browsers."""

    # --- sessions (the kubelet's streaming server, docs/protocol.md §1.5) -------------------
    #: No data on any stream of a session for this long ends it; pings do not count
    #: (kubelet ``--streaming-connection-idle-timeout``, default 4 h).
    idle_timeout: float = 4 * 3600.0
    #: A SPDY client that upgrades and does not open every stream it asked for within this is
    #: closed; so is a port-forward stream pair left half-made (kubelet: 30 s).
    stream_creation_timeout: float = 30.0

    # --- SPDY (transport.SpdySession and protocol.spdy) ------------------------------------
    #: Streams open at once on one SPDY connection; more are refused with
    #: RST_STREAM(REFUSED_STREAM) and the connection lives on (exec uses 5, port-forward 2 per
    #: local connection).
    max_streams: int = 256
    #: Port-forward stream pairs (local connections) at once on one connection, over SPDY or
    #: the WebSocket tunnel; more are refused as above.
    max_portforward_pairs: int = 100
    #: Largest SPDY frame a peer may declare; a larger one ends the connection (GOAWAY) before
    #: any of it is buffered (kubectl writes 32 KiB DATA frames).
    max_frame_size: int = 1 * MIB
    #: Largest inflated SPDY header block, and most name/value pairs in one (kubectl: 3-5).
    max_header_block_size: int = 64 * KIB
    max_header_count: int = 100
    #: A SPDY connection holding part of a frame for this long without completing it is
    #: closed (a peer that declares a large frame and stops one byte short).
    progress_timeout: float = 30.0

    # --- WebSocket (every WebSocket route) -------------------------------------------------
    #: Largest WebSocket message accepted; larger is closed with 1009 (message too big).
    max_websocket_message: int = 4 * MIB

    # --- buffers and back-pressure ---------------------------------------------------------
    #: Bytes queued toward one peer before we stop reading from that peer (raw SPDY relies on
    #: the transport's own pause_writing; the WebSocket tunnel uses this).
    write_buffer: int = 1 * MIB
    #: Bytes of client input (stdin, port-forward data) held for a slow process or socket
    #: before reading from the client pauses.
    read_buffer: int = 1 * MIB

    # --- HTTP (connections.py) -------------------------------------------------------------
    #: A connection must finish its request head within this (slowloris), and an idle
    #: keep-alive connection is closed after it.
    header_timeout: float = 15.0
    #: TLS handshake must finish within this.
    handshake_timeout: float = 10.0
    #: Longest request line or header field, and most header fields in one request.
    max_header_size: int = 8190
    max_header_fields: int = 100
    #: Largest request body on the gateway (a pod manifest, a browser session request).
    max_request_body: int = 1 * MIB
    #: Connections served at once (HTTP, WebSocket and SPDY together); one more gets a plain
    #: "503 Service Unavailable" and is closed.
    max_connections: int = 4096
    #: Warnings a peer can cause (accept errors, refused streams) are logged at most once per
    #: this many seconds per kind, with a count of what was suppressed.
    log_interval: float = 10.0

    # --- the pod under a session -----------------------------------------------------------
    #: How often a session checks that what it runs in still runs: an exec ends (its process
    #: killed, the container's state in its status) once its container has stopped, and a
    #: port-forward once its pod's sandbox has. One runtime call per container per interval,
    #: however many sessions share it (context.ContainerWatch).
    container_poll: float = 1.0

    # --- shutdown (cli serve) --------------------------------------------------------------
    #: On SIGTERM/SIGINT the server stops accepting, lets live sessions run this long, then
    #: ends each with a status saying the server is shutting down and kills their processes.
    shutdown_grace: float = 5.0

    # --- dials into pods and runtime calls -------------------------------------------------
    #: A port-forward dial into a pod that has not connected within this fails (that pair
    #: only). Dials never hold a thread while they wait.
    dial_timeout: float = 5.0
    #: Dials in flight at once for one port-forward connection; more wait their turn.
    max_dials_per_connection: int = 8

    # --- tokens (tokens.RequestCache) ------------------------------------------------------
    #: How long a one-time stream URL stays usable (kubelet: 1 minute).
    token_ttl: float = 60.0
    #: URLs waiting for their client at once, for CRI/library callers (kubelet: 1000).
    max_tokens: int = 1000
    #: ... and, counted apart, for the browser page's sessions.
    max_browser_tokens: int = 100

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not value > 0:
                raise ValueError(f"Limits.{f.name} must be positive, not {value!r}")
        if self.max_streams < 2 * self.max_portforward_pairs:
            raise ValueError("Limits.max_streams must be at least 2 * max_portforward_pairs")

    def replace(self, **changes: float) -> Limits:
        """A copy with some limits changed (``Limits().replace(idle_timeout=60)``)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


__all__ = ["KIB", "MIB", "Limits"]
