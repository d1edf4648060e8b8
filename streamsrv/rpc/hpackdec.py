"""HPACK (RFC 7541) decoding of header blocks, without I/O (docs/cri.md, "The gRPC server").

:class:`HeaderDecoder` decodes what the ``hpack`` package's ``Decoder`` decodes, to the same
fields (as bytes), and refuses what it refuses: an index outside the tables, a string or an
integer cut short, a table size update past the size we allow or after a field, bad Huffman
code (the ``hpack`` package's Huffman decoder is used), a header list over the limit. It is
written for the blocks gRPC clients send: ours are literals without indexing (each name and
value a plain string), grpc-go's mostly indexed fields. The package's decoder cost 21 us per
block of ours; one loop over the block with no object per field costs a quarter of that
(docs/benchmarks.md, "2026-12-05 (06 UTC): CRI list calls").

Only the decoder: the blocks we send are literals without indexing, which need no state.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

#: The static table (RFC 7541 Appendix A), index 1 first.
STATIC: Final[tuple[tuple[bytes, bytes], ...]] = HeaderTable.STATIC_TABLE
#: What an entry costs the dynamic table beyond its name and value (RFC 7541 4.1).
ENTRY_OVERHEAD: Final = 32
#: SETTINGS_HEADER_TABLE_SIZE's initial value, which we never change.
DEFAULT_TABLE_SIZE: Final = 4096
#: No integer in a header block may be larger (an index, a length, a table size).
MAX_INT: Final = (1 << 32) - 1

_FIRST_DYNAMIC: Final = len(STATIC) + 1


class DecodeError(Exception):
    """A header block that does not decode: the connection's HPACK state is lost
    (COMPRESSION_ERROR)."""


class HeaderListTooLarge(DecodeError):
    """A header block whose fields, each counted as in the dynamic table, pass the limit."""


class HeaderDecoder:
    """One connection's HPACK decoding context: the dynamic table, and its size."""

    def __init__(self, max_header_list: int, allowed_table_size: int = DEFAULT_TABLE_SIZE):
        #: Bytes a decoded header list may hold, each field counted with its 32 (RFC 9113
        #: SETTINGS_MAX_HEADER_LIST_SIZE, as we advertise it).
        self.max_header_list = max_header_list
        self._allowed = allowed_table_size  # the largest size update the peer may send
        self._max = allowed_table_size  # the table's size now
        self._size = 0
        self._table: deque[tuple[bytes, bytes]] = deque()  # the newest first

    @property
    def table(self) -> list[tuple[bytes, bytes]]:
        """The dynamic table's entries, the newest first."""
        return list(self._table)

    def decode(self, block: bytes | bytearray | memoryview) -> list[tuple[bytes, bytes]]:
        """A header block's fields, in order.

        Raises:
            DecodeError: (or :class:`HeaderListTooLarge`) the block does not decode; the
                table may have changed, so the connection cannot go on.
        """
        data = block if type(block) is bytes else bytes(block)
        end = len(data)
        pos = 0
        fields: list[tuple[bytes, bytes]] = []
        size = 0
        limit = self.max_header_list
        while pos < end:
            first = data[pos]
            pos += 1
            if first & 0x80:  # an indexed field (6.1)
                index = first & 0x7F
                if index == 0x7F:
                    index, pos = _integer(data, pos, index)
                field = self._field(index)
            elif first & 0x40:  # a literal with incremental indexing (6.2.1)
                index = first & 0x3F
                if index == 0x3F:
                    index, pos = _integer(data, pos, index)
                field, pos = self._literal(data, pos, index)
                self._add(*field)
            elif first & 0x20:  # a dynamic table size update (6.3)
                if fields:
                    raise DecodeError("a table size update after a header field")
                new_size = first & 0x1F
                if new_size == 0x1F:
                    new_size, pos = _integer(data, pos, new_size)
                if new_size > self._allowed:
                    raise DecodeError(
                        f"a table size update to {new_size}, over the {self._allowed} allowed"
                    )
                self._max = new_size
                self._evict()
                continue
            else:  # a literal without indexing (6.2.2) or never indexed (6.2.3)
                index = first & 0x0F
                if index == 0x0F:
                    index, pos = _integer(data, pos, index)
                field, pos = self._literal(data, pos, index)
            size += ENTRY_OVERHEAD + len(field[0]) + len(field[1])
            if size > limit:
                raise HeaderListTooLarge(f"a header list over {limit} bytes")
            fields.append(field)
        return fields

    def _literal(self, data: bytes, pos: int, index: int) -> tuple[tuple[bytes, bytes], int]:
        """A literal field at ``pos``: its name the entry at ``index``, or a string when that is
        0, then its value; and where it ends."""
        if index:
            name = self._field(index)[0]
        else:
            name, pos = _string(data, pos)
        value, pos = _string(data, pos)
        return (name, value), pos

    def _field(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index < _FIRST_DYNAMIC:
            return STATIC[index - 1]
        at = index - _FIRST_DYNAMIC
        if 0 <= at < len(self._table):
            return self._table[at]
        raise DecodeError(f"index {index} is in neither table")

    def _add(self, name: bytes, value: bytes) -> None:
        cost = ENTRY_OVERHEAD + len(name) + len(value)
        if cost > self._max:  # larger than the table: it empties the table (4.4)
            self._table.clear()
            self._size = 0
            return
        self._table.appendleft((name, value))
        self._size += cost
        self._evict()

    def _evict(self) -> None:
        table = self._table
        while self._size > self._max:
            name, value = table.pop()
            self._size -= ENTRY_OVERHEAD + len(name) + len(value)


def _integer(data: bytes, pos: int, value: int) -> tuple[int, int]:
    """The rest of an integer whose prefix was full (RFC 7541 5.1), and where it ends."""
    shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise DecodeError("an integer cut short")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if value > MAX_INT:
            raise DecodeError("an integer over 2^32")
        if not byte & 0x80:
            return value, pos
        shift += 7


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    """A string literal (RFC 7541 5.2) at ``pos``, and where it ends."""
    if pos >= len(data):
        raise DecodeError("a string missing")
    first = data[pos]
    length = first & 0x7F
    pos += 1
    if length == 0x7F:
        length, pos = _integer(data, pos, length)
    stop = pos + length
    if stop > len(data):
        raise DecodeError("a string cut short")
    text = data[pos:stop]
    if first & 0x80:
        try:
            text = decode_huffman(text)
        except HPACKDecodingError as exc:
            raise DecodeError(f"bad Huffman code: {exc}") from None
    return text, stop
