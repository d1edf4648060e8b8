"""metav1.Status bodies, byte for byte as Go writes them, and what client-go makes of them."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamsrv.protocol import status
from streamsrv.protocol.status import (
    exit_code,
    internal_error,
    kube_status,
    marshal,
    parse_status,
    success,
    v1_error_text,
)

# docs/protocol.md §2.3 and A.2, as the kubelet lib / apiserver translator write them.
SUCCESS = b'{"metadata":{},"status":"Success"}'
EXIT_3 = (
    b'{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: '
    b'command terminated with exit code 3","reason":"NonZeroExitCode","details":{"causes":'
    b'[{"reason":"ExitCode","message":"3"}]}}'
)
INTERNAL = (
    b'{"metadata":{},"status":"Failure","message":"Internal error occurred: error executing '
    b'command in container: container not found","reason":"InternalError","details":{"causes":'
    b'[{"message":"error executing command in container: container not found"}]},"code":500}'
)


def test_success() -> None:
    assert success() == SUCCESS
    assert parse_status(success()) == 0


def test_exit_code_literal() -> None:
    assert exit_code(3) == EXIT_3
    assert parse_status(EXIT_3) == 3


def test_exit_code_with_the_runtimes_text() -> None:
    body = exit_code(3, "command 'sh -c exit 3' exited with 3")
    decoded = json.loads(body)
    assert decoded["message"] == (
        "command terminated with non-zero exit code: command 'sh -c exit 3' exited with 3"
    )
    assert decoded["details"] == {"causes": [{"reason": "ExitCode", "message": "3"}]}


@pytest.mark.parametrize("code", [0, 1, 2, 126, 127, 128 + 9, 255])
def test_exit_codes_the_client_accepts(code: int) -> None:
    assert parse_status(exit_code(code)) == code


@pytest.mark.parametrize("code", [-1, 256, 1 << 31])
def test_exit_codes_outside_0_255_are_refused(code: int) -> None:
    with pytest.raises(ValueError, match="outside 0-255"):
        exit_code(code)


@given(st.integers(0, 255))
def test_exit_code_round_trip(code: int) -> None:
    assert parse_status(exit_code(code)) == code


def test_internal_error_literal() -> None:
    assert internal_error("container not found") == INTERNAL
    assert parse_status(INTERNAL) == (
        "Internal error occurred: error executing command in container: container not found"
    )


def test_internal_error_attach_wording() -> None:
    decoded = json.loads(internal_error("no such container", attach=True))
    assert decoded["message"] == (
        "Internal error occurred: error attaching to container: no such container"
    )
    assert decoded["details"] == {
        "causes": [{"message": "error attaching to container: no such container"}]
    }
    assert decoded["code"] == 500 and decoded["reason"] == "InternalError"
    assert list(decoded) == ["metadata", "status", "message", "reason", "details", "code"]


# --------------------------------------------------------------------------- Go's encoding/json


def test_marshal_escapes_like_go() -> None:
    assert marshal({"m": "<a & b>"}) == b'{"m":"\\u003ca \\u0026 b\\u003e"}'
    assert marshal({"m": "x\u2028y\u2029"}) == b'{"m":"x\\u2028y\\u2029"}'
    assert marshal({"m": 'q"\\'}) == b'{"m":"q\\"\\\\"}'
    assert marshal({"m": "\n\r\t\x01\x1f"}) == b'{"m":"\\n\\r\\t\\u0001\\u001f"}'
    # Non-ASCII stays raw UTF-8, as in Go.
    assert marshal({"m": "h\u00e9 \u2603"}) == '{"m":"h\u00e9 \u2603"}'.encode()


def test_marshal_replaces_invalid_utf8() -> None:
    assert marshal({"m": "a\udc80b"}) == '{"m":"a\ufffd\ufffd\ufffdb"}'.encode()


def test_marshal_refuses_nan() -> None:
    with pytest.raises(ValueError):
        marshal({"x": float("nan")})


def test_error_text_with_markup_is_escaped() -> None:
    body = internal_error("exec: <nil> & more")
    assert b"<" not in body and b"&" not in body
    assert json.loads(body)["message"].endswith("exec: <nil> & more")


@given(st.text())
def test_marshal_output_is_valid_json(text: str) -> None:
    body = marshal({"message": text})
    decoded = json.loads(body)["message"]
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        assert decoded == text


# --------------------------------------------------------------------------- v1-v3 text


def test_v1_error_text() -> None:
    assert v1_error_text(EXIT_3) == (
        b"command terminated with non-zero exit code: command terminated with exit code 3"
    )
    assert v1_error_text(INTERNAL) == (
        b"Internal error occurred: error executing command in container: container not found"
    )
    assert v1_error_text(exit_code(3, "exited with 3")) == (
        b"command terminated with non-zero exit code: exited with 3"
    )
    assert v1_error_text(success()) == b""


def test_v1_error_text_passes_other_text_through() -> None:
    assert v1_error_text(b"plain failure") == b"plain failure"
    assert v1_error_text(b"[1]") == b"[1]"


@pytest.mark.parametrize(("version", "prefix"), [(1, "Error"), (2, "error"), (3, "error")])
def test_parse_status_plain_text_versions(version: int, prefix: str) -> None:
    text = v1_error_text(INTERNAL)
    assert parse_status(text, version=version) == (
        f"{prefix} executing remote command: {text.decode()}"
    )
    assert parse_status(b"", version=version) == 0


# --------------------------------------------------------------------------- client-go v4 rules


def test_empty_error_stream_is_success() -> None:
    assert parse_status(b"") == 0


@pytest.mark.parametrize(
    ("body", "result"),
    [
        (b'{"status":"Success"}', 0),
        (b'{"STATUS":"Success"}', 0),  # Go matches field names case-insensitively
        (b"null", "error stream protocol error: unknown error"),
        (b"{}", "error stream protocol error: unknown error"),
        (b'{"status":"Weird"}', "error stream protocol error: unknown error"),
        (b'{"status":"Failure","message":"boom","reason":"Forbidden"}', "boom"),
        (b'{"status":"Failure"}', ""),
        (
            b'{"status":"Failure","reason":"NonZeroExitCode"}',
            "error stream protocol error: details must be set",
        ),
        (
            b'{"status":"Failure","reason":"NonZeroExitCode","details":null}',
            "error stream protocol error: details must be set",
        ),
        (
            b'{"status":"Failure","reason":"NonZeroExitCode","details":{}}',
            "error stream protocol error: no ExitCode cause given",
        ),
        (
            b'{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":'
            b'[{"reason":"Other","message":"1"}]}}',
            "error stream protocol error: no ExitCode cause given",
        ),
        (
            b'{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":'
            b'[{"reason":"Other","message":"x"},{"reason":"ExitCode","message":"7"}]}}',
            7,
        ),
        (
            b'{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":'
            b'[{"reason":"ExitCode","message":"007"}]}}',
            7,
        ),
        (
            b'{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":'
            b'[{"reason":"ExitCode","message":"256"}]}}',
            'error stream protocol error: invalid exit code value "256"',
        ),
        (
            b'{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":'
            b'[{"reason":"ExitCode","message":"-1"}]}}',
            'error stream protocol error: invalid exit code value "-1"',
        ),
        (
            b'{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":'
            b'[{"reason":"ExitCode","message":"+3"}]}}',
            'error stream protocol error: invalid exit code value "+3"',
        ),
        (
            b'{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":'
            b'[{"reason":"ExitCode"}]}}',
            'error stream protocol error: invalid exit code value ""',
        ),
    ],
)
def test_parse_status_follows_client_go(body: bytes, result: int | str) -> None:
    assert parse_status(body) == result


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1,2]",
        b'"text"',
        b'{"status":5}',
        b'{"status":"Failure","reason":"NonZeroExitCode","details":[]}',
        b'{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":{}}}',
        b'{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[5]}}',
        b'{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":'
        b'[{"reason":"ExitCode","message":3}]}}',
    ],
)
def test_parse_status_protocol_errors(body: bytes) -> None:
    result = parse_status(body)
    assert isinstance(result, str) and result.startswith("error stream protocol error: ")


# --------------------------------------------------------------------------- API error bodies


def test_kube_status_key_order() -> None:
    body = kube_status(404, "NotFound", 'pods "p" not found', details={"name": "p", "kind": "pods"})
    assert marshal(body) == (
        b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
        b'"message":"pods \\"p\\" not found","reason":"NotFound",'
        b'"details":{"name":"p","kind":"pods"},"code":404}'
    )


def test_kube_status_omits_empty_fields() -> None:
    assert kube_status(500, "", "") == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "code": 500,
    }
    assert list(kube_status(429, "TooManyRequests", "slow down")) == [
        "kind",
        "apiVersion",
        "metadata",
        "status",
        "message",
        "reason",
        "code",
    ]


def test_constants() -> None:
    assert status.NON_ZERO_EXIT_CODE_REASON == "NonZeroExitCode"
    assert status.EXIT_CODE_CAUSE_TYPE == "ExitCode"
