"""The incremental terminal-size decoder (docs/protocol.md §2.4)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamsrv import errors
from streamsrv.protocol.resize import (
    MAX_DEPTH,
    MAX_PENDING,
    ResizeDecoder,
    ResizeStreamError,
    TerminalSize,
    encode,
)

sizes = st.builds(TerminalSize, st.integers(1, 0xFFFF), st.integers(1, 0xFFFF))


def test_kubectl_bytes() -> None:
    # What client-go's json.Encoder writes for 120x40 (docs/protocol.md A.2).
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


def test_resize_errors_are_protocol_errors_and_value_errors() -> None:
    assert issubclass(ResizeStreamError, errors.ProtocolError)
    assert issubclass(ResizeStreamError, ValueError)
    with pytest.raises(errors.StreamsrvError):
        ResizeDecoder().feed(b"x")
    with pytest.raises(ValueError):
        ResizeDecoder().feed(b"x")


def test_max_pending_stays_64_kib() -> None:
    # test_a_large_object_within_the_bound_is_fine holds a 60,000-byte value.
    assert MAX_PENDING == 64 * 1024


def test_four_mib_of_sizes_in_one_message() -> None:
    batch = [TerminalSize(1 + i % 300, 1 + i % 97) for i in range(4 * 1024 * 1024 // 24)]
    data = b"".join(encode(size) for size in batch)
    assert len(data) >= 4 * 1024 * 1024
    out = ResizeDecoder().feed(data)
    assert out == batch
    assert out[-1] == batch[-1]


def test_four_mib_of_sizes_in_spdy_sized_pieces() -> None:
    data = b"".join(encode(TerminalSize(1 + i % 500, 1 + i % 200)) for i in range(180_000))
    decoder = ResizeDecoder()
    out: list[TerminalSize] = []
    for i in range(0, len(data), 32 * 1024):
        out += decoder.feed(data[i : i + 32 * 1024])
    assert len(out) == 180_000
    assert out[-1] == TerminalSize(1 + 179_999 % 500, 1 + 179_999 % 200)


def test_unusual_objects_in_bulk() -> None:
    one = b'{ "height" : 24, "x": [{"}": "]"}], "WIDTH": 80 }\n null {}'
    assert ResizeDecoder().feed(one * 50_000)[-1] == TerminalSize(80, 24)


def test_the_kubectl_shortcut_agrees_at_the_edges() -> None:
    data = (
        b'{"Width":65535,"Height":1}{"Width":0,"Height":5}{"Width":5,"Height":0}'
        b'{"Width":10000,"Height":9999} {"Width":60000,"Height":65000}\r\n'
        b'{"Width":65529,"Height":65499}null{ }{"Width":1,"Height":2}'
    )
    assert ResizeDecoder().feed(data) == [
        TerminalSize(65535, 1),
        TerminalSize(10000, 9999),
        TerminalSize(60000, 65000),
        TerminalSize(65529, 65499),
        TerminalSize(1, 2),
    ]
    for bad in (b'{"Width":65536,"Height":1}', b'{"Width":01,"Height":1}'):
        with pytest.raises(ResizeStreamError):
            ResizeDecoder().feed(encode(TerminalSize(3, 3)) + bad)


def test_nesting_at_the_limit_and_one_past_it() -> None:
    deep = MAX_DEPTH - 1  # the object itself is one level
    ok = b'{"x":' + b"[" * deep + b"]" * deep + b',"Width":2,"Height":3}'
    assert ResizeDecoder().feed(ok) == [TerminalSize(2, 3)]
    too_deep = b'{"x":' + b"[" * (deep + 1) + b"]" * (deep + 1) + b"}"
    with pytest.raises(ResizeStreamError, match="nested deeper"):
        ResizeDecoder().feed(too_deep)


# ------------------------------------------------------------------ the reference decoder


class _ReferenceDecoder:
    """The byte-by-byte decoder ResizeDecoder replaced, kept as the oracle of its fast paths
    (with its ``_size``: a bracket scan, then ``json.loads`` of each value)."""

    def __init__(self, *, max_pending: int = MAX_PENDING) -> None:
        self._buf = bytearray()
        self._max_pending = max_pending
        self.failed = False
        self._scan = 0
        self._depth = 0
        self._in_string = False
        self._escape = False

    def feed(self, data: bytes) -> list[TerminalSize]:
        if self.failed:
            return []
        self._buf += data
        sizes: list[TerminalSize] = []
        try:
            while (value := self._next_value()) is not None:
                size = _reference_size(value)
                if size is not None:
                    sizes.append(size)
        except ValueError as exc:
            self.failed = True
            self._buf.clear()
            raise ResizeStreamError(f"resize stream: {exc}", sizes) from None
        return sizes

    def _next_value(self) -> bytes | None:
        buf = self._buf
        if self._scan == 0:
            start = 0
            while start < len(buf) and buf[start] in b" \t\r\n":
                start += 1
            del buf[:start]
            if not buf:
                return None
            if buf[0] != ord("{"):
                if buf[:4] == b"null":
                    del buf[:4]
                    return b"null"
                if b"null".startswith(buf):
                    return None
                raise ValueError(f"expected an object, got {bytes(buf[:16])!r}")
        i = self._scan
        depth, in_string, escape = self._depth, self._in_string, self._escape
        end = len(buf)
        while i < end:
            byte = buf[i]
            i += 1
            if in_string:
                if escape:
                    escape = False
                elif byte == ord("\\"):
                    escape = True
                elif byte == ord('"'):
                    in_string = False
            elif byte == ord('"'):
                in_string = True
            elif byte in b"{[":
                depth += 1
                if depth > MAX_DEPTH:
                    raise ValueError(f"nested deeper than {MAX_DEPTH}")
            elif byte in b"}]":
                depth -= 1
                if depth == 0:
                    value = bytes(buf[:i])
                    del buf[:i]
                    self._scan, self._depth, self._in_string, self._escape = 0, 0, False, False
                    return value
        if len(buf) > self._max_pending:
            raise ValueError(f"no complete JSON value in {len(buf)} bytes")
        self._scan, self._depth, self._in_string, self._escape = i, depth, in_string, escape
        return None


def _reference_size(raw: bytes) -> TerminalSize | None:
    pairs = json.loads(raw.decode("utf-8", "replace"), object_pairs_hook=list)
    if pairs is None:
        return None
    assert isinstance(pairs, list)
    width = height = 0
    for key, value in pairs:
        name = key.lower()
        if name == "width":
            width = _reference_uint16(key, value, width)
        elif name == "height":
            height = _reference_uint16(key, value, height)
    if width == 0 or height == 0:
        return None
    return TerminalSize(width, height)


def _reference_uint16(key: str, value: object, current: int) -> int:
    if value is None:
        return current
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise ValueError(f"{key}: {value!r} is not a uint16")
    return value


Outcome = tuple[str, list[TerminalSize], bool]


def _outcomes(decoder: ResizeDecoder | _ReferenceDecoder, chunks: list[bytes]) -> list[Outcome]:
    """Per ``feed``: the sizes (or the error's text and sizes) and ``failed`` afterwards."""
    out: list[Outcome] = []
    for chunk in chunks:
        try:
            out.append(("", decoder.feed(chunk), decoder.failed))
        except ResizeStreamError as exc:
            out.append((str(exc), exc.sizes, decoder.failed))
    return out


_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 70_000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet='ab{}[]"\\ \u00e9\u2603\n', max_size=6),
)
_json_value = st.recursive(
    _json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(alphabet='xy}"\\', max_size=3), inner, max_size=3),
    ),
    max_leaves=8,
)
_keys = st.sampled_from(["Width", "Height", "width", "HEIGHT", "wIdTh", "x", "s", ""])


def _dump(pairs: list[tuple[str, Any]], spaced: bool) -> bytes:
    separators = (" , ", " : ") if spaced else (",", ":")
    body = separators[0].join(
        json.dumps(key) + separators[1] + json.dumps(value) for key, value in pairs
    )
    return ("{" + body + "}").encode()


_numbers = st.one_of(
    st.integers(0, 70_000).map(lambda n: b"%d" % n),
    st.sampled_from([b"65535", b"65536", b"00", b"01", b"-1", b"1.0", b"1e2", b"99999"]),
)
_tokens = st.one_of(
    st.builds(lambda w, h: b'{"Width":%s,"Height":%s}' % (w, h), _numbers, _numbers),
    st.builds(lambda w, h: b'{"Width":%s,"Height":%s}\n' % (w, h), _numbers, _numbers),
    st.builds(encode, st.builds(TerminalSize, st.integers(0, 9), st.integers(0, 9))),
    st.sampled_from([b" ", b"\n", b"\t", b"\r\n", b"   ", b"null", b"nul", b"{}", b"{ \n}"]),
    st.builds(_dump, st.lists(st.tuples(_keys, _json_value), max_size=4), st.booleans()),
    st.builds(
        lambda n, tail: b'{"x":' + b"[" * n + b"]" * n + tail,
        st.integers(MAX_DEPTH - 3, MAX_DEPTH + 1),
        st.sampled_from([b"}", b',"Width":1,"Height":1}', b""]),
    ),
    st.sampled_from([b"{", b"}", b"[", b"]", b'"', b"\\", b"\xff", b"\xe2\x98", b"x", b"n"]),
    st.binary(max_size=4),
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tokens=st.lists(_tokens, max_size=24),
    cuts=st.lists(st.integers(0, 10**6), max_size=8),
    max_pending=st.sampled_from([4, 16, 60, 300, MAX_PENDING]),
)
def test_fast_decoder_matches_the_reference(
    tokens: list[bytes], cuts: list[int], max_pending: int
) -> None:
    stream = b"".join(tokens)
    bounds = [0, *sorted(cut % (len(stream) + 1) for cut in cuts), len(stream)]
    chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    chunks.append(encode(TerminalSize(7, 7)))  # what happens after the stream
    fast = _outcomes(ResizeDecoder(max_pending=max_pending), chunks)
    assert fast == _outcomes(_ReferenceDecoder(max_pending=max_pending), chunks)
    # The same stream whole, and byte by byte.
    assert _outcomes(ResizeDecoder(max_pending=max_pending), [stream]) == _outcomes(
        _ReferenceDecoder(max_pending=max_pending), [stream]
    )
    single = [stream[i : i + 1] for i in range(len(stream))]
    assert _outcomes(ResizeDecoder(max_pending=max_pending), single) == _outcomes(
        _ReferenceDecoder(max_pending=max_pending), single
    )


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=120), cut=st.integers(0, 120))
def test_fast_decoder_matches_the_reference_on_any_bytes(data: bytes, cut: int) -> None:
    chunks = [data[:cut], data[cut:]]
    assert _outcomes(ResizeDecoder(max_pending=40), chunks) == _outcomes(
        _ReferenceDecoder(max_pending=40), chunks
    )
