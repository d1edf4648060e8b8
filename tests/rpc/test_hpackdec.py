"""streamsrv.rpc.hpackdec: RFC 7541's own examples, its refusals, and, for any blocks the
``hpack`` package's encoder makes (Huffman or not, indexed, never indexed, table size
changes) and for any bytes at all, the same fields, the same table and the same refusals as
the ``hpack`` package's decoder."""

from __future__ import annotations

from collections.abc import Callable

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsrv.rpc.hpackdec import DecodeError, HeaderDecoder, HeaderListTooLarge

LIMIT = 16384


def fields(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(n.encode(), v.encode()) for n, v in pairs]


REQUEST_1 = fields((":method", "GET"), (":scheme", "http"), (":path", "/"))


# ------------------------------------------------------------------------ RFC 7541 Appendix C


def test_the_rfc_requests_without_huffman() -> None:
    """C.3: three requests on one connection, and the table after each."""
    d = HeaderDecoder(LIMIT)
    first = bytes.fromhex("828684410f7777772e6578616d706c652e636f6d")
    assert d.decode(first) == [*REQUEST_1, (b":authority", b"www.example.com")]
    assert d.table == [(b":authority", b"www.example.com")]
    second = bytes.fromhex("828684be58086e6f2d6361636865")
    assert d.decode(second) == [
        *REQUEST_1,
        (b":authority", b"www.example.com"),
        (b"cache-control", b"no-cache"),
    ]
    assert d.table == [(b"cache-control", b"no-cache"), (b":authority", b"www.example.com")]
    third = bytes.fromhex("828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565")
    assert d.decode(third) == fields(
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    )
    assert d.table[0] == (b"custom-key", b"custom-value") and len(d.table) == 3


def test_the_rfc_request_with_huffman() -> None:
    """C.4.1: the first request, its strings Huffman-coded."""
    d = HeaderDecoder(LIMIT)
    block = bytes.fromhex("828684418cf1e3c2e5f23a6ba0ab90f4ff")
    assert d.decode(block) == [*REQUEST_1, (b":authority", b"www.example.com")]


def test_the_table_evicts_and_a_literal_larger_than_it_empties_it() -> None:
    """4.3 and 4.4: the oldest entries go first; an entry larger than the table empties it."""
    d = HeaderDecoder(LIMIT)
    d.decode(b"\x40\x01a\x01b")  # a: b, indexed (34 bytes)
    assert d.table == [(b"a", b"b")]
    d.decode(b"\x3f\x45" + b"\x40\x01c\x3c" + b"x" * 60)  # size 100; c: x*60 (93 bytes)
    assert d.table == [(b"c", b"x" * 60)]
    assert d.decode(b"\x40\x01d\x7f\x00" + b"y" * 127) == [(b"d", b"y" * 127)]  # 160 > 100
    assert d.table == []


# ------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("block", "why"),
    [
        (b"\x80", "index 0"),
        (b"\xbe", "index 62 with an empty dynamic table"),
        (b"\xff\x80", "an integer cut short"),
        (b"\xff\xff\xff\xff\xff\x7f", "an integer over 2^32"),
        (b"\x00\x05ab", "a name cut short"),
        (b"\x04", "a value missing"),
        (b"\x82\x20", "a table size update after a field"),
        (b"\x3f\xe9\x26", "a table size update to 5000, over 4096"),
        (b"\x04\x81\xff", "bad Huffman code (EOS padding of 8 bits)"),
    ],
)
def test_blocks_that_do_not_decode(block: bytes, why: str) -> None:
    with pytest.raises(DecodeError):
        HeaderDecoder(LIMIT).decode(block)
    with pytest.raises(hpack.HPACKDecodingError):  # the package refuses them too
        hpack.Decoder().decode(block, raw=True)


def test_a_header_list_over_the_limit() -> None:
    block = b"\x00\x01a\x7f\x00" + b"v" * 127  # 32 + 1 + 127 = 160
    assert HeaderDecoder(160).decode(block) == [(b"a", b"v" * 127)]
    with pytest.raises(HeaderListTooLarge):
        HeaderDecoder(159).decode(block)


def test_the_block_may_be_any_buffer() -> None:
    block = bytes.fromhex("828684410f7777772e6578616d706c652e636f6d")
    for kind in (bytearray, memoryview):
        assert HeaderDecoder(LIMIT).decode(kind(block)) == HeaderDecoder(LIMIT).decode(block)


# ------------------------------------------------------------------------ against hpack

names = st.sampled_from(
    [":path", ":authority", "content-type", "grpc-timeout", "te", "user-agent", "x-a", "x-b"]
)
values = st.text(st.characters(codec="utf-8"), max_size=40)
header = st.tuples(names, values, st.booleans())  # the flag: never indexed
block_spec = st.tuples(
    st.lists(header, max_size=12),
    st.booleans(),  # Huffman
    st.none() | st.integers(0, 4096),  # a table size change before the block
)


@settings(max_examples=300, deadline=None)
@given(st.lists(block_spec, min_size=1, max_size=8))
def test_what_hpacks_encoder_makes_decodes_the_same(
    blocks: list[tuple[list[tuple[str, str, bool]], bool, int | None]],
) -> None:
    encoder = hpack.Encoder()
    theirs = hpack.Decoder(max_header_list_size=LIMIT)
    ours = HeaderDecoder(LIMIT)
    for headers, huffman, resize in blocks:
        if resize is not None:
            encoder.header_table_size = resize
        block = encoder.encode(
            [hpack.NeverIndexedHeaderTuple(n, v) if never else (n, v) for n, v, never in headers],
            huffman=huffman,
        )
        assert ours.decode(block) == theirs.decode(block, raw=True)
        assert ours.table == list(theirs.header_table.dynamic_entries)


def _outcome(decode: Callable[[bytes], object], block: bytes) -> object:
    """The fields, or "too large", or "error"."""
    try:
        return decode(block)
    except (HeaderListTooLarge, hpack.OversizedHeaderListError):
        return "too large"
    except (DecodeError, hpack.HPACKDecodingError):
        return "error"


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=4), st.integers(64, 400))
def test_any_bytes_get_the_same_answer(blocks: list[bytes], limit: int) -> None:
    """Garbage, and garbage after valid blocks: fields and table, or a refusal, as hpack's."""
    theirs = hpack.Decoder(max_header_list_size=limit)
    ours = HeaderDecoder(limit)
    prefix = bytes.fromhex("828684410f7777772e6578616d706c652e636f6d")
    for block in [prefix, *blocks]:
        mine = _outcome(ours.decode, block)
        other = _outcome(lambda b: list(theirs.decode(b, raw=True)), block)
        assert mine == other, block.hex()
        if isinstance(mine, str):
            return  # the connection is over
        assert ours.table == list(theirs.header_table.dynamic_entries)
