"""Opening a WebSocket to a pod subresource, with the server's refusals made into exceptions."""

from __future__ import annotations

import json
import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus, NegotiationError
from websockets.typing import Subprotocol

from .config import ClientConfig
from .errors import ConnectFailed, UpgradeError, upgrade_error

USER_AGENT = "streamsrv-client/0.1"
#: Largest message accepted from the server (streamsrv sends at most 256 KiB + 1, Go 32 KiB + 1).
MAX_MESSAGE = 4 << 20
#: Messages the connection holds before it stops reading the socket (websockets' high water).
MAX_QUEUE = 4
#: Bytes waiting to be sent before a send waits (high, low): enough for the next message to be
#: framed and encrypted while the last one is still on its way.
WRITE_LIMIT = (4 << 20, 1 << 20)


def pod_path(namespace: str, pod: str, subresource: str) -> str:
    return (
        f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(pod, safe='')}/{subresource}"
    )


async def open_websocket(
    config: ClientConfig,
    path: str,
    query: Sequence[tuple[str, str]],
    protocols: Sequence[str],
    *,
    open_timeout: float | None,
    max_message: int = MAX_MESSAGE,
) -> ClientConnection:
    """Upgrade ``path?query`` on the configured server, offering ``protocols`` in order.

    Raises:
        UpgradeError: (or its 401/403/404 subclasses) a non-101 answer, with the ``metav1.Status``
            message when the body is one; also a 101 naming a subprotocol that was not offered.
        ConnectFailed: no connection (DNS, TCP, TLS, timeout).
    """
    url = config.websocket_base + path + ("?" + urlencode(query) if query else "")
    ctx = config.ssl_context()
    extra: dict[str, Any] = {}
    if ctx is not None:
        extra["ssl"] = ctx
        if config.tls_server_name:
            extra["server_hostname"] = config.tls_server_name
    try:
        return await connect(
            url,
            additional_headers=config.request_headers(),
            subprotocols=[Subprotocol(p) for p in protocols],
            compression=None,  # kubectl offers no permessage-deflate either
            max_size=max_message,
            max_queue=MAX_QUEUE,
            write_limit=WRITE_LIMIT,
            open_timeout=open_timeout,
            ping_interval=20,
            ping_timeout=60,
            close_timeout=5,
            proxy=config.proxy_url,
            user_agent_header=USER_AGENT,
            **extra,
        )
    except InvalidStatus as exc:
        response = exc.response
        body = bytes(response.body or b"")[: 64 << 10]
        reason, message = _status_text(body)
        raise upgrade_error(
            response.status_code, reason, message or response.reason_phrase, body
        ) from None
    except NegotiationError as exc:
        raise UpgradeError(101, "", f"{exc} (offered {', '.join(protocols)})") from None
    except InvalidHandshake as exc:
        raise UpgradeError(0, "", f"the WebSocket handshake failed: {exc}") from exc
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        raise ConnectFailed(f"cannot connect to {config.server}: {exc}") from exc


def json_object(body: bytes) -> dict[str, Any] | None:
    """``body`` decoded when it is a JSON object (a ``metav1.Status``, say), else None."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _status_text(body: bytes) -> tuple[str, str]:
    """(reason, message) of a ``metav1.Status`` body, else ("", the body's first line)."""
    status = json_object(body)
    if status is not None and status.get("kind") == "Status":
        return str(status.get("reason") or ""), str(status.get("message") or "")
    text = body.decode("utf-8", "replace").strip().splitlines()
    return "", text[0][:500] if text else ""
