"""What :mod:`streamsrv.client` raises: one root below streamsrv's own.

```
StreamsrvError
└── ClientError              anything the client raises on purpose
    ├── ConfigError          a kubeconfig it cannot use (missing file, context, exec plugin)
    ├── ConnectFailed        no connection: DNS, TCP, TLS or a timeout before the upgrade
    ├── UpgradeError         the server answered the WebSocket upgrade with something else
    │   ├── Unauthorized     401: no or wrong credentials
    │   ├── Forbidden        403
    │   └── NotFound         404: no such pod or container (or no such route)
    ├── RemoteError          the session ended with an error that is not an exit code
    ├── ConnectionLost       the connection ended before the server said how the session ended
    ├── PortForwardError     the server could not reach the pod's port
    └── HalfCloseUnsupported stdin cannot be ended alone on the negotiated protocol (v4 and older)
```

A non-zero exit code is a value (``await process.wait()``), never an exception.
"""

from __future__ import annotations

from typing import Any

from ..errors import StreamsrvError


class ClientError(StreamsrvError):
    """The root of what :mod:`streamsrv.client` raises on purpose."""


class ConfigError(ClientError):
    """A kubeconfig (or explicit configuration) the client cannot use."""


class ConnectFailed(ClientError):
    """No connection to the server: name lookup, TCP, TLS, or a timeout before the upgrade."""


class UpgradeError(ClientError):
    """The server refused the WebSocket upgrade.

    Attributes:
        status: the HTTP status code.
        reason: the ``metav1.Status`` reason when the body was one (``NotFound``, ...), else "".
        message: the Status message, or the start of the body, or the HTTP reason phrase.
        body: up to 64 KiB of the response body.
    """

    def __init__(self, status: int, reason: str, message: str, body: bytes = b"") -> None:
        super().__init__(f"{status} {reason or 'upgrade refused'}: {message}")
        self.status, self.reason, self.message, self.body = status, reason, message, body


class Unauthorized(UpgradeError):
    """401: the server did not accept the credentials."""


class Forbidden(UpgradeError):
    """403: the credentials are not allowed to do this."""


class NotFound(UpgradeError):
    """404: the pod, the container or the route does not exist."""


class RemoteError(ClientError):
    """The session ended with an error other than an exit code (``metav1.Status`` Failure).

    Attributes:
        message: the server's message, as kubectl would print it.
        reason: the Status reason (``InternalError``, ...), "" for plain-text (v1) errors.
        status: the decoded Status object, ``None`` for plain-text errors.
    """

    def __init__(self, message: str, reason: str = "", status: dict[str, Any] | None = None):
        super().__init__(message)
        self.message, self.reason, self.status = message, reason, status


class ConnectionLost(ClientError):
    """The connection ended (reset, abnormal close, no status) before the session's end was
    known: the command's exit code is unknown."""


class PortForwardError(ClientError):
    """The server reported an error on a port's error channel (e.g. nothing listens there)."""


class HalfCloseUnsupported(ClientError):
    """Ending stdin alone needs ``v5.channel.k8s.io``; the server chose an older protocol."""


def upgrade_error(status: int, reason: str, message: str, body: bytes = b"") -> UpgradeError:
    """The :class:`UpgradeError` subclass for an HTTP status."""
    cls = {401: Unauthorized, 403: Forbidden, 404: NotFound}.get(status, UpgradeError)
    return cls(status, reason, message, body)


__all__ = [
    "ClientError",
    "ConfigError",
    "ConnectFailed",
    "ConnectionLost",
    "Forbidden",
    "HalfCloseUnsupported",
    "NotFound",
    "PortForwardError",
    "RemoteError",
    "Unauthorized",
    "UpgradeError",
    "upgrade_error",
]
