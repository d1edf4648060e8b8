"""The request model: what an exec, attach or port-forward asks for, and the kubelet's checks.

No I/O and no HTTP here: the stream server, the gateway, the browser page and a CRI daemon all
build these objects and validate them the same way (docs/protocol.md §1.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from .errors import RequestError
from .pods import ContainerSpec

Kind = Literal["exec", "attach", "portforward"]


class InvalidRequest(RequestError, ValueError):
    """A request the kubelet would refuse with gRPC ``InvalidArgument`` (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Who asked for a session, and for which pod: what its audit record names (docs/recording.md).

    The stream server itself only knows container and sandbox ids; whoever issues the request
    (the gateway, a CRI daemon) fills this in. It takes no part in a request's equality.
    """

    #: The identity that asked: ``bearer:<fingerprint>`` for the gateway's token, ``cri`` for
    #: a CRI caller; empty when unknown.
    user: str = ""
    namespace: str = ""
    pod: str = ""
    container: str = ""
    #: How the request reached the server: ``kubectl`` (the gateway's pods/exec routes),
    #: ``browser`` (the page's one-time URLs), ``cri`` (a CRI Exec/Attach/PortForward).
    via: str = ""


@dataclass(frozen=True, slots=True)
class ExecRequest:
    container_id: str
    cmd: tuple[str, ...]
    stdin: bool = False
    stdout: bool = True
    stderr: bool = False
    tty: bool = False
    origin: Origin | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class AttachRequest:
    container_id: str
    stdin: bool = False
    stdout: bool = True
    stderr: bool = False
    tty: bool = False
    origin: Origin | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class PortForwardRequest:
    sandbox_id: str
    ports: tuple[int, ...] = ()  # only the WebSocket channel protocol uses them
    origin: Origin | None = field(default=None, compare=False)


StreamRequest = ExecRequest | AttachRequest
AnyRequest = ExecRequest | AttachRequest | PortForwardRequest


def validate(req: AnyRequest) -> None:
    """The kubelet's checks in ``GetExec``/``GetAttach``/``GetPortForward`` (§1.2).

    Raises:
        InvalidRequest: the request breaks one of them.
    """
    if isinstance(req, PortForwardRequest):
        if not req.sandbox_id:
            raise InvalidRequest("missing required pod_sandbox_id")
        return
    if not req.container_id:
        raise InvalidRequest("missing required container_id")
    if req.tty and req.stderr:
        raise InvalidRequest("tty and stderr cannot both be true")
    if not (req.stdin or req.stdout or req.stderr):
        joiner = "or" if isinstance(req, ExecRequest) else "and"
        raise InvalidRequest(f"one of stdin, stdout, {joiner} stderr must be set")
    if isinstance(req, ExecRequest) and not req.cmd:
        raise InvalidRequest("missing required cmd")


def kind_of(req: AnyRequest) -> Kind:
    if isinstance(req, ExecRequest):
        return "exec"
    if isinstance(req, AttachRequest):
        return "attach"
    return "portforward"


def exec_request(
    cid: str, cmd: Sequence[str], *, stdin: bool, stdout: bool, stderr: bool, tty: bool
) -> ExecRequest:
    """An exec as the kubelet takes it from the apiserver: a tty has no separate stderr."""
    return ExecRequest(
        cid, tuple(cmd), stdin=stdin, stdout=stdout, stderr=stderr and not tty, tty=tty
    )


def attach_request(
    spec: ContainerSpec, cid: str, *, stdin: bool, stdout: bool, stderr: bool, tty: bool
) -> AttachRequest:
    """An attach limited to what the container has: no tty or stdin unless its spec opens them."""
    tty = tty and spec.tty
    return AttachRequest(
        cid, stdin=stdin and spec.stdin, stdout=stdout, stderr=stderr and not tty, tty=tty
    )


__all__ = [
    "AnyRequest",
    "AttachRequest",
    "ExecRequest",
    "InvalidRequest",
    "Kind",
    "Origin",
    "PortForwardRequest",
    "StreamRequest",
    "attach_request",
    "exec_request",
    "kind_of",
    "validate",
]
