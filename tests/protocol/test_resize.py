"""The incremental terminal-size decoder (protocol.md §2.4)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamsrv.protocol.resize import (
    MAX_PENDING,
    ResizeDecoder,
    ResizeStreamError,
    TerminalSize,
    encode,
)

sizes = st.builds(TerminalSize, st.integers(1, 0xFFFF), st.integers(1, 0xFFFF))


def test_kubectl_bytes() -> None:
    # What client-go's json.Encoder writes for 120x40 (protocol.md A.2).
    assert encode(TerminalSize(120, 40)) == b'{"Width":120,"Height":40}\n'
    assert ResizeDecoder().feed(b'{"Width":120,"Height":40}\n') == [TerminalSize(120, 40)]


def test_terminal_size_is_frozen() -> None:
    size = TerminalSize(80, 24)
    with pytest.raises(AttributeError):
        size.width = 1  # type: ignore[misc]


def test_split_across_messages() -> None:
    decoder = ResizeDecoder()
    assert decoder.feed(b'{"Wid') == []
    assert decoder.feed(b'th":80,"Hei') == []
    assert decoder.feed(b'ght":24') == []
    assert decoder.feed(b"}") == [TerminalSize(80, 24)]
    assert decoder.feed(b"\n") == []


def test_several_in_one_message() -> None:
    data = encode(TerminalSize(81, 25)) + encode(TerminalSize(80, 24)) + b'{"Width":1'
    decoder = ResizeDecoder()
    assert decoder.feed(data) == [TerminalSize(81, 25), TerminalSize(80, 24)]
    assert decoder.feed(b',"Height":2}') == [TerminalSize(1, 2)]


def test_one_byte_at_a_time() -> None:
    decoder = ResizeDecoder()
    out = []
    for byte in encode(TerminalSize(200, 50)) * 3:
        out += decoder.feed(bytes([byte]))
    assert out == [TerminalSize(200, 50)] * 3


def test_no_separator_and_extra_whitespace() -> None:
    data = b' \t\r\n{ "Width" : 10 , "Height" : 20 }{"Width":30,"Height":40}  '
    assert ResizeDecoder().feed(data) == [TerminalSize(10, 20), TerminalSize(30, 40)]


def test_field_names_are_case_insensitive() -> None:
    data = b'{"width":1,"HEIGHT":2}{"wIdTh":3,"hEiGhT":4}'
    assert ResizeDecoder().feed(data) == [TerminalSize(1, 2), TerminalSize(3, 4)]


def test_unknown_fields_are_ignored() -> None:
    data = b'{"Width":80,"x":{"y":[1,{"z":"}]{"}]},"s":"\\"}","Height":24}'
    assert ResizeDecoder().feed(data) == [TerminalSize(80, 24)]


def test_braces_inside_strings_split_across_messages() -> None:
    decoder = ResizeDecoder()
    assert decoder.feed(b'{"note":"a\\') == []
    assert decoder.feed(b'"}{","Width":5,') == []
    assert decoder.feed(b'"Height":6}') == [TerminalSize(5, 6)]


def test_last_duplicate_wins_and_null_keeps_the_value() -> None:
    data = b'{"Width":1,"width":2,"Height":3,"Height":null}'
    assert ResizeDecoder().feed(data) == [TerminalSize(2, 3)]


def test_zero_sizes_are_dropped() -> None:
    # kubecontainer.HandleResizing skips sizes with a zero width or height.
    data = b'{"Width":0,"Height":24}{"Width":80}{}null{"Width":80,"Height":24}'
    assert ResizeDecoder().feed(data) == [TerminalSize(80, 24)]


def test_null_split_across_messages() -> None:
    decoder = ResizeDecoder()
    assert decoder.feed(b"nu") == []
    assert decoder.feed(b"ll") == []
    assert decoder.feed(encode(TerminalSize(1, 1))) == [TerminalSize(1, 1)]


def test_utf8_split_across_messages() -> None:
    data = '{"n\u00e9":"\u2603","Width":7,"Height":8}'.encode()
    decoder = ResizeDecoder()
    cut = data.index(b"\xe2") + 1  # inside the snowman
    assert decoder.feed(data[:cut]) == []
    assert decoder.feed(data[cut:]) == [TerminalSize(7, 8)]


def test_uint16_limits() -> None:
    data = b'{"Width":65535,"Height":1}'
    assert ResizeDecoder().feed(data) == [TerminalSize(65535, 1)]


@pytest.mark.parametrize(
    "data",
    [
        b'{"Width":65536,"Height":1}',
        b'{"Width":-1,"Height":1}',
        b'{"Width":80.0,"Height":24}',
        b'{"Width":8e1,"Height":24}',
        b'{"Width":"80","Height":24}',
        b'{"Width":true,"Height":24}',
        b'{"Width":[80],"Height":24}',
        b'{"Width":NaN,"Height":24}',
        b'{"Width":80,"Height":24',  # fine so far ...
    ],
)
def test_bad_values(data: bytes) -> None:
    decoder = ResizeDecoder()
    if data.endswith(b"24"):
        assert decoder.feed(data) == []
        data = b"]"  # ... until a mismatched close
    with pytest.raises(ResizeStreamError, match="resize stream"):
        decoder.feed(data)
    assert decoder.failed


@pytest.mark.parametrize("data", [b"x", b"[1]", b'"text"', b"42", b"nulx", b"true", b"}"])
def test_values_that_are_not_objects(data: bytes) -> None:
    with pytest.raises(ResizeStreamError, match="expected an object"):
        ResizeDecoder().feed(data)


def test_malformed_object() -> None:
    with pytest.raises(ResizeStreamError):
        ResizeDecoder().feed(b"{Width:80}")


def test_sizes_before_the_error_are_kept() -> None:
    decoder = ResizeDecoder()
    with pytest.raises(ResizeStreamError) as info:
        decoder.feed(encode(TerminalSize(80, 24)) + b"garbage" + encode(TerminalSize(1, 1)))
    assert info.value.sizes == [TerminalSize(80, 24)]
    assert isinstance(info.value, ValueError)


def test_after_an_error_input_is_ignored() -> None:
    # Go's handleResizeEvents stops at the first decode error.
    decoder = ResizeDecoder()
    with pytest.raises(ResizeStreamError):
        decoder.feed(b"x")
    assert decoder.failed
    assert decoder.feed(encode(TerminalSize(80, 24))) == []


def test_garbage_without_an_end_is_bounded() -> None:
    decoder = ResizeDecoder()
    chunk = b'{"padding":"' + b"a" * 1000
    assert decoder.feed(chunk) == []
    with pytest.raises(ResizeStreamError, match="no complete JSON value"):
        for _ in range(MAX_PENDING // 1000 + 1):
            decoder.feed(b"a" * 1000)


def test_max_pending_is_configurable() -> None:
    decoder = ResizeDecoder(max_pending=10)
    assert decoder.feed(b"{" + b" " * 9) == []
    with pytest.raises(ResizeStreamError, match="in 11 bytes"):
        decoder.feed(b" ")


def test_a_large_object_within_the_bound_is_fine() -> None:
    data = b'{"pad":"' + b"a" * 60000 + b'","Width":3,"Height":4}'
    decoder = ResizeDecoder()
    out = []
    for i in range(0, len(data), 7):
        out += decoder.feed(data[i : i + 7])
    assert out == [TerminalSize(3, 4)]


def test_nesting_is_bounded() -> None:
    with pytest.raises(ResizeStreamError, match="nested deeper"):
        ResizeDecoder().feed(b'{"x":' + b"[" * 100)


@given(st.lists(sizes, max_size=10), st.data())
def test_round_trip_with_any_split(batch: list[TerminalSize], data: st.DataObject) -> None:
    stream = b"".join(encode(size) for size in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = ResizeDecoder()
    out: list[TerminalSize] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out += decoder.feed(stream[start:cut])
        start = cut
    assert out == batch


@given(st.binary(max_size=200))
def test_fuzz_only_documented_errors(data: bytes) -> None:
    decoder = ResizeDecoder()
    try:
        for size in decoder.feed(data):
            assert 1 <= size.width <= 0xFFFF and 1 <= size.height <= 0xFFFF
    except ResizeStreamError:
        assert decoder.failed
