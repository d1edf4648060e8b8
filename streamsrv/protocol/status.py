"""``metav1.Status`` bodies: the end of an exec/attach, and API errors (docs/protocol.md §2.3).

The streaming bodies are byte-for-byte what the kubelet lib writes on the error stream or
channel 3: ``json.Marshal(status.Status())`` of an ``apierrors.StatusError`` built in
``remotecommand/exec.go`` and ``attach.go``. Go's compact ``encoding/json`` emits struct fields
in declaration order (``kind``, ``apiVersion``, ``metadata``, ``status``, ``message``,
``reason``, ``details``, ``code``), drops empty ``omitempty`` fields, always writes
``"metadata":{}`` (``ListMeta`` is a struct), serialises a ``StatusCause``'s type under
``reason``, and HTML-escapes ``<``, ``>`` and ``&``; :func:`marshal` reproduces that.

Which protocol gets what (§2.3): v4 and v5 always receive the JSON body, success included;
v1-v3 receive only the failure's message as plain text (:func:`v1_error_text`) and nothing on
success. A client that sees an empty error stream reports success, so never end a session
without a status (§8.2).
"""

from __future__ import annotations

import json
import re
from typing import Any

NON_ZERO_EXIT_CODE_REASON = "NonZeroExitCode"
EXIT_CODE_CAUSE_TYPE = "ExitCode"
INTERNAL_ERROR_REASON = "InternalError"
EXEC_ERROR_PREFIX = "error executing command in container: "
ATTACH_ERROR_PREFIX = "error attaching to container: "

_SUCCESS = b'{"metadata":{},"status":"Success"}'
# encoding/json's HTMLEscape plus the two JavaScript line terminators it always escapes.
_GO_STRING_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)
_UINT = re.compile(r"[0-9]+", re.ASCII)


def marshal(obj: Any) -> bytes:
    """``obj`` as Go's ``json.Marshal`` writes it: compact, UTF-8, HTML-escaped.

    Dict keys keep their insertion order, so build dicts in Go's field order. Text that is not
    valid UTF-8 (lone surrogates) becomes U+FFFD, as in Go.

    Raises:
        ValueError: ``obj`` holds NaN or an infinity (Go refuses those too).
        TypeError: ``obj`` holds something JSON cannot represent.
    """
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    text = text.translate(_GO_STRING_ESCAPES)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace").encode("utf-8")


def success() -> bytes:
    """``{"metadata":{},"status":"Success"}``: a v4/v5 exec or attach that went well."""
    return _SUCCESS


def exit_code(code: int, message: str | None = None) -> bytes:
    """The v4/v5 status of a command that exited with ``code`` (Go ``remotecommand/exec.go``).

    The body carries the code as the decimal message of an ``ExitCode`` cause, which client-go
    parses with ``strconv.ParseUint(s, 10, 8)``: anything outside 0-255 makes kubectl fail with
    ``invalid exit code value`` instead of exiting with the code (§8.3). POSIX exit statuses are
    0-255 already (a signal shows up as 128+n), so an out-of-range code is a runtime bug; it is
    refused here rather than wrapped with ``& 0xFF``, which would turn 256 into a success.
    A caller that cannot rule it out should send :func:`internal_error` instead.

    Args:
        code: the exit code, 0-255 (0 is accepted but normally reported with :func:`success`).
        message: the runtime's text for the exit (Go formats its ``ExitError`` with ``%v``);
            defaults to client-go's ``command terminated with exit code <code>``, which is what
            a real apiserver's WebSocket translator sends.

    Returns:
        E.g. for 3: ``{"metadata":{},"status":"Failure","message":"command terminated with
        non-zero exit code: command terminated with exit code 3","reason":"NonZeroExitCode",
        "details":{"causes":[{"reason":"ExitCode","message":"3"}]}}``.

    Raises:
        ValueError: ``code`` is outside 0-255.
    """
    if not 0 <= code <= 255:
        raise ValueError(f"exit code {code} is outside 0-255")
    text = f"command terminated with exit code {code}" if message is None else message
    return marshal(
        {
            "metadata": {},
            "status": "Failure",
            "message": f"command terminated with non-zero exit code: {text}",
            "reason": NON_ZERO_EXIT_CODE_REASON,
            "details": {"causes": [{"reason": EXIT_CODE_CAUSE_TYPE, "message": str(int(code))}]},
        }
    )


def internal_error(message: str, *, attach: bool = False) -> bytes:
    """The v4/v5 status of an exec or attach the runtime could not carry out.

    Go: ``apierrors.NewInternalError(fmt.Errorf("error executing command in container: %v",
    err))`` (``"error attaching to container: %v"`` for attach, which has no exit codes).

    Args:
        message: the error's text.
        attach: use the attach wording.

    Returns:
        ``{"metadata":{},"status":"Failure","message":"Internal error occurred: <prefix><msg>",
        "reason":"InternalError","details":{"causes":[{"message":"<prefix><msg>"}]},"code":500}``.
    """
    error = (ATTACH_ERROR_PREFIX if attach else EXEC_ERROR_PREFIX) + message
    return marshal(
        {
            "metadata": {},
            "status": "Failure",
            "message": f"Internal error occurred: {error}",
            "reason": INTERNAL_ERROR_REASON,
            "details": {"causes": [{"message": error}]},
            "code": 500,
        }
    )


def v1_error_text(body: bytes) -> bytes:
    """The plain text a v1-v3 client gets for a status body (Go ``v1WriteStatusFunc``).

    Go writes ``StatusError.Error()``, i.e. the status message, and nothing at all for a
    success. The client reports it as ``error executing remote command: <text>``.

    Args:
        body: a body from :func:`exit_code` or :func:`internal_error` (or :func:`success`).

    Returns:
        The message as UTF-8; ``b""`` for a success, which a v1-v3 client must not be sent.
        A body that is not a JSON object is returned unchanged.
    """
    try:
        status = json.loads(body)
    except ValueError:
        return body
    if not isinstance(status, dict):
        return body
    if status.get("status") == "Success":
        return b""
    return str(status.get("message", "")).encode("utf-8", "replace")


def kube_status(
    code: int, reason: str, message: str, *, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An API failure body as the apiserver sends it, keys in its order.

    ``{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":...,
    "reason":...,"details":...,"code":...}``; an empty ``message`` or ``reason`` and a ``None``
    ``details`` are left out (``omitempty``). Serialise it with :func:`marshal`.

    Args:
        code: the HTTP status code, repeated in the body.
        reason: a ``metav1.StatusReason`` such as ``NotFound``, ``Forbidden``, ``TooManyRequests``.
        message: human-readable text (kubectl prints it after ``Error from server``).
        details: optional ``StatusDetails`` (``name``, ``group``, ``kind``, ``causes``,
            ``retryAfterSeconds``, in that order).
    """
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}}
    body["status"] = "Failure"
    if message:
        body["message"] = message
    if reason:
        body["reason"] = reason
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def parse_status(body: bytes, *, version: int = 4) -> int | str:
    """What client-go makes of an error stream: an exit code, or an error message.

    Mirrors ``errorDecoderV4.decode`` in client-go ``tools/remotecommand/v4.go`` (and the v1-v3
    plain-text decoders for ``version < 4``), so tests can check what kubectl would report.
    An empty body is a success in every version (``watchErrorStream``).

    Args:
        body: everything the server wrote on the error stream / channel 3.
        version: the protocol generation: 1, 2, 3 (plain text) or 4 (v4 and v5, JSON).

    Returns:
        ``0`` for success, the exit code for a ``NonZeroExitCode`` failure whose first
        ``ExitCode`` cause is valid (``strconv.ParseUint(s, 10, 8)``: 0-255, digits only),
        otherwise the error text kubectl would print.
    """
    if not body:
        return 0
    if version < 4:
        text = body.decode("utf-8", "replace")
        prefix = "Error" if version == 1 else "error"
        return f"{prefix} executing remote command: {text}"
    try:
        status = json.loads(body)
        if status is None:  # Go: unmarshalling null leaves the Status empty
            status = {}
        state = _text(status, "status")
        reason = _text(status, "reason")
        message = _text(status, "message")
        details = _field(status, "details")
        causes = [] if details is None else _field(_object(details), "causes")
        if causes is None:
            causes = []
        elif not isinstance(causes, list):
            raise ValueError(f"cannot unmarshal {type(causes).__name__} into causes")
        exit_causes = [
            _text(cause, "message")
            for cause in causes
            if _text(cause, "reason") == EXIT_CODE_CAUSE_TYPE
        ]
    except ValueError as exc:  # JSONDecodeError too
        return f"error stream protocol error: {exc} in {body.decode('utf-8', 'replace')!r}"
    if state == "Success":
        return 0
    if state != "Failure":
        return "error stream protocol error: unknown error"
    if reason != NON_ZERO_EXIT_CODE_REASON:
        return message
    if details is None:
        return "error stream protocol error: details must be set"
    if not exit_causes:
        return f"error stream protocol error: no {EXIT_CODE_CAUSE_TYPE} cause given"
    value = exit_causes[0]
    if not _UINT.fullmatch(value) or int(value) > 255:
        return f"error stream protocol error: invalid exit code value {json.dumps(value)}"
    return int(value)


def _field(obj: dict[str, Any], name: str) -> Any:
    """``obj[name]`` the way Go's decoder finds a field: case-insensitively, last key wins."""
    found = None
    for key, value in obj.items():
        if key.lower() == name:
            found = value
    return found


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"cannot unmarshal {type(value).__name__} into an object")
    return value


def _text(obj: Any, name: str) -> str:
    value = _field(_object(obj), name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"cannot unmarshal {type(value).__name__} into string field {name}")
    return value
