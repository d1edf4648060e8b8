"""The WebSocket channel codec, fed literal and generated messages (docs/protocol.md §3, §5a)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamsrv.protocol.channels import (
    BASE64_CHANNEL,
    CHANNEL,
    CLOSE,
    ERROR,
    NO_PROTOCOL,
    PORTFORWARD_PROTOCOLS,
    REMOTECOMMAND_PROTOCOLS,
    RESIZE,
    SPDY_TUNNEL_PORTFORWARD,
    STDERR,
    STDIN,
    STDOUT,
    V4_BASE64_CHANNEL,
    V4_CHANNEL,
    V5_CHANNEL,
    ChannelCodec,
    ChannelProtocolError,
    CloseChannel,
    Decoded,
    negotiate,
    parse_ports,
    parse_protocol_header,
    port_bytes,
    port_channels,
    port_preamble,
)

ALL = (V5_CHANNEL, V4_CHANNEL, V4_BASE64_CHANNEL, CHANNEL, BASE64_CHANNEL, NO_PROTOCOL)
BINARY = (V5_CHANNEL, V4_CHANNEL, CHANNEL, NO_PROTOCOL)
BASE64 = (V4_BASE64_CHANNEL, BASE64_CHANNEL)


# --------------------------------------------------------------------------- constants


def test_names_and_numbers() -> None:
    assert V5_CHANNEL == "v5.channel.k8s.io"
    assert V4_CHANNEL == "v4.channel.k8s.io"
    assert V4_BASE64_CHANNEL == "v4.base64.channel.k8s.io"
    assert CHANNEL == "channel.k8s.io"
    assert BASE64_CHANNEL == "base64.channel.k8s.io"
    assert SPDY_TUNNEL_PORTFORWARD == "SPDY/3.1+portforward.k8s.io"
    assert (STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE) == (0, 1, 2, 3, 4, 255)
    assert REMOTECOMMAND_PROTOCOLS == (
        V5_CHANNEL,
        V4_CHANNEL,
        V4_BASE64_CHANNEL,
        CHANNEL,
        BASE64_CHANNEL,
    )
    assert PORTFORWARD_PROTOCOLS == (V4_CHANNEL, V4_BASE64_CHANNEL)


@pytest.mark.parametrize(
    ("name", "is_base64", "supports_close", "status_version"),
    [
        (V5_CHANNEL, False, True, 4),
        (V4_CHANNEL, False, False, 4),
        (V4_BASE64_CHANNEL, True, False, 4),
        (CHANNEL, False, False, 1),
        (BASE64_CHANNEL, True, False, 1),
        (NO_PROTOCOL, False, False, 1),
    ],
)
def test_codec_properties(
    name: str, is_base64: bool, supports_close: bool, status_version: int
) -> None:
    codec = ChannelCodec(name)
    assert codec.subprotocol == name
    assert codec.is_base64 is is_base64
    assert codec.supports_close is supports_close
    assert codec.status_version == status_version
    assert codec.num_channels == 5
    assert repr(codec) == f"ChannelCodec({name!r}, num_channels=5)"


@pytest.mark.parametrize(
    "name", [SPDY_TUNNEL_PORTFORWARD, "v3.channel.k8s.io", "V5.channel.k8s.io"]
)
def test_codec_refuses_other_protocols(name: str) -> None:
    with pytest.raises(ValueError, match="not a channel protocol"):
        ChannelCodec(name)


@pytest.mark.parametrize(
    ("name", "count"), [(V4_CHANNEL, 0), (V4_CHANNEL, 256), (BASE64_CHANNEL, 81)]
)
def test_codec_refuses_channel_counts_the_framing_cannot_carry(name: str, count: int) -> None:
    with pytest.raises(ValueError, match="cannot carry"):
        ChannelCodec(name, num_channels=count)


def test_largest_channel_counts() -> None:
    assert ChannelCodec(V4_CHANNEL, num_channels=255).encode(254, b"x") == b"\xfex"
    assert ChannelCodec(BASE64_CHANNEL, num_channels=80).encode(79, b"") == "\x7f"


# --------------------------------------------------------------------------- literal vectors


def test_stdout_hi_binary() -> None:
    assert ChannelCodec(V5_CHANNEL).encode(STDOUT, b"hi\n") == bytes.fromhex("0168690a")
    assert ChannelCodec(V4_CHANNEL).decode(bytes.fromhex("0168690a")) == Decoded(1, b"hi\n")


def test_stdout_hi_base64() -> None:
    codec = ChannelCodec(BASE64_CHANNEL)
    assert codec.encode(STDOUT, b"hi\n") == "1aGkK"
    assert codec.decode("1aGkK") == Decoded(STDOUT, b"hi\n")


def test_go_doc_examples_base64() -> None:
    # wsstream/conn.go: stdin "foo\n" is "0Zm9vCg==", stdout "\n" is "1Cg==".
    codec = ChannelCodec(V4_BASE64_CHANNEL)
    assert codec.decode("0Zm9vCg==") == Decoded(STDIN, b"foo\n")
    assert codec.encode(STDOUT, b"\n") == "1Cg=="


def test_ready_marker_is_an_empty_payload() -> None:
    assert ChannelCodec(V5_CHANNEL).encode(STDOUT, b"") == b"\x01"
    assert ChannelCodec(BASE64_CHANNEL).encode(STDOUT, b"") == "1"


def test_v5_close_signal() -> None:
    codec = ChannelCodec(V5_CHANNEL)
    assert codec.decode(bytes.fromhex("ff00")) == CloseChannel(STDIN)
    assert codec.decode(b"\xff\x04") == CloseChannel(RESIZE)
    assert codec.close_signal(STDIN) == bytes.fromhex("ff00")


def test_status_message_on_channel_3() -> None:
    body = b'{"metadata":{},"status":"Success"}'
    assert ChannelCodec(V5_CHANNEL).encode(ERROR, body) == b"\x03" + body


# --------------------------------------------------------------------------- decode rules


@pytest.mark.parametrize("name", ALL)
def test_empty_messages_are_ignored(name: str) -> None:
    codec = ChannelCodec(name)
    assert codec.decode(b"") is None
    assert codec.decode("") is None


@pytest.mark.parametrize("name", BINARY)
def test_channel_only_message_is_an_empty_write(name: str) -> None:
    assert ChannelCodec(name).decode(b"\x00") == Decoded(STDIN, b"")


def test_base64_channel_only_message_is_an_empty_write() -> None:
    assert ChannelCodec(BASE64_CHANNEL).decode("0") == Decoded(STDIN, b"")


@pytest.mark.parametrize("name", BINARY)
def test_text_messages_in_binary_protocols(name: str) -> None:
    # The Python client sends str data as TEXT frames: chr(channel) + data, UTF-8 on the wire.
    codec = ChannelCodec(name)
    assert codec.decode("\x00ls -l\n") == Decoded(STDIN, b"ls -l\n")
    assert codec.decode("\x00h\u00e9") == Decoded(STDIN, "h\u00e9".encode())
    assert codec.decode('\x04{"Width":80,"Height":24}') == Decoded(
        RESIZE, b'{"Width":80,"Height":24}'
    )


def test_base64_protocol_accepts_binary_messages() -> None:
    assert ChannelCodec(V4_BASE64_CHANNEL).decode(b"0aGkK") == Decoded(STDIN, b"hi\n")


@pytest.mark.parametrize("name", BINARY)
def test_unknown_channels_are_ignored(name: str) -> None:
    codec = ChannelCodec(name)
    assert codec.decode(b"\x05data") is None
    assert codec.decode(b"\xfe") is None


@pytest.mark.parametrize("name", [V4_CHANNEL, CHANNEL, NO_PROTOCOL])
def test_ff_is_just_an_unknown_channel_before_v5(name: str) -> None:
    codec = ChannelCodec(name)
    assert codec.decode(b"\xff\x00") is None
    assert codec.decode(b"\xff") is None
    assert codec.decode(b"\xff\x00\x00") is None


@pytest.mark.parametrize("name", BASE64)
def test_base64_unknown_channels_are_ignored(name: str) -> None:
    codec = ChannelCodec(name)
    assert codec.decode("5aGkK") is None
    assert codec.decode("/aGkK") is None  # '/' - '0' wraps to 255 in Go's byte arithmetic
    assert codec.decode("\u00ffaGkK") is None


@pytest.mark.parametrize(
    "payload",
    # The second line: padding after a complete quantum, which Go refuses and Python's
    # b64decode(validate=True) accepted (found by the stateful channel tests).
    [
        *("0aGk", "0aG k=", "0aGk=aGk=", "0=aGk", "0a", "0aGk==="),
        *("0QUJD=", "0AAAA=", "0QUJD==", "0QUJD====", "2aGkK\r\n===="),
    ],
)
def test_invalid_base64_is_dropped(payload: str) -> None:
    assert ChannelCodec(BASE64_CHANNEL).decode(payload) is None


def test_base64_decoding_is_go_compatible() -> None:
    codec = ChannelCodec(BASE64_CHANNEL)
    # Go's StdEncoding skips CR and LF, and does not insist on zero padding bits.
    assert codec.decode("0aG\r\nkK\n") == Decoded(STDIN, b"hi\n")
    assert codec.decode("0aGl=") == Decoded(STDIN, b"hi")
    # Non-ASCII (UTF-8 on the wire) is not base64.
    assert codec.decode("0aGk\u00e9") is None


@pytest.mark.parametrize("message", [b"\xff", b"\xff\x00\x00", b"\xff\x00" + b"x" * 100])
def test_v5_close_of_wrong_length_aborts(message: bytes) -> None:
    with pytest.raises(ChannelProtocolError, match="must be 2 bytes"):
        ChannelCodec(V5_CHANNEL).decode(message)


@pytest.mark.parametrize("channel", [5, 6, 0xFE, 0xFF])
def test_v5_close_of_unknown_channel_aborts(channel: int) -> None:
    with pytest.raises(ChannelProtocolError, match="does not exist"):
        ChannelCodec(V5_CHANNEL).decode(bytes((CLOSE, channel)))


def test_channel_protocol_error_is_a_value_error() -> None:
    assert issubclass(ChannelProtocolError, ValueError)


def test_v5_close_as_text_is_not_a_close() -> None:
    # A TEXT "\xff\x00" is c3 bf 00 on the wire: channel 0xc3, ignored (as in Go).
    assert ChannelCodec(V5_CHANNEL).decode("\u00ff\x00") is None


def test_lone_surrogates_in_text_do_not_crash() -> None:
    assert ChannelCodec(V5_CHANNEL).decode("\x00\ud800") == Decoded(STDIN, b"\xed\xa0\x80")


def test_num_channels_bounds_decoding() -> None:
    codec = ChannelCodec(V4_CHANNEL, num_channels=2)
    assert codec.decode(b"\x01x") == Decoded(1, b"x")
    assert codec.decode(b"\x02x") is None


# --------------------------------------------------------------------------- encode rules


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("channel", [-1, 5, 255])
def test_encode_refuses_channels_out_of_range(name: str, channel: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        ChannelCodec(name).encode(channel, b"x")


@pytest.mark.parametrize("name", [V4_CHANNEL, V4_BASE64_CHANNEL, CHANNEL, NO_PROTOCOL])
def test_close_signal_needs_v5(name: str) -> None:
    with pytest.raises(ValueError, match="no CLOSE signal"):
        ChannelCodec(name).close_signal(STDIN)


@pytest.mark.parametrize("channel", [-1, 5])
def test_close_signal_channel_range(channel: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        ChannelCodec(V5_CHANNEL).close_signal(channel)


def test_encode_accepts_large_payloads_without_changing_them() -> None:
    data = bytes(range(256)) * 4096
    message = ChannelCodec(V5_CHANNEL).encode(STDOUT, data)
    assert isinstance(message, bytes)
    assert message[0] == STDOUT and message[1:] == data


# --------------------------------------------------------------------------- round trips

channel_numbers = st.integers(min_value=0, max_value=4)
payloads = st.binary(max_size=2048)


@pytest.mark.parametrize("name", ALL)
@given(channel=channel_numbers, data=payloads)
def test_round_trip_every_protocol(name: str, channel: int, data: bytes) -> None:
    codec = ChannelCodec(name)
    message = codec.encode(channel, data)
    assert isinstance(message, str if codec.is_base64 else bytes)
    assert codec.decode(message) == Decoded(channel, data)


@pytest.mark.parametrize("name", BASE64)
@given(channel=channel_numbers, data=payloads)
def test_base64_wire_format(name: str, channel: int, data: bytes) -> None:
    message = ChannelCodec(name).encode(channel, data)
    assert message == str(channel) + base64.standard_b64encode(data).decode()
    assert message.isascii()


@pytest.mark.parametrize("name", BINARY)
@given(channel=channel_numbers, data=payloads)
def test_binary_wire_format(name: str, channel: int, data: bytes) -> None:
    assert ChannelCodec(name).encode(channel, data) == bytes([channel]) + data


@given(
    count=st.integers(min_value=1, max_value=80),
    data=st.data(),
    payload=payloads,
    name=st.sampled_from(ALL),
)
def test_round_trip_any_channel_count(
    count: int, data: st.DataObject, payload: bytes, name: str
) -> None:
    codec = ChannelCodec(name, num_channels=count)
    channel = data.draw(st.integers(min_value=0, max_value=count - 1))
    assert codec.decode(codec.encode(channel, payload)) == Decoded(channel, payload)


@given(channel=channel_numbers)
def test_close_round_trip(channel: int) -> None:
    codec = ChannelCodec(V5_CHANNEL)
    assert codec.decode(codec.close_signal(channel)) == CloseChannel(channel)


@pytest.mark.parametrize("name", ALL)
@given(message=st.one_of(st.binary(max_size=64), st.text(max_size=64)))
def test_decode_never_raises_unexpectedly(name: str, message: bytes | str) -> None:
    """Fuzz: any message decodes, is dropped, or (v5) is a documented protocol error."""
    codec = ChannelCodec(name)
    try:
        result = codec.decode(message)
    except ChannelProtocolError:
        assert codec.supports_close
        return
    assert result is None or isinstance(result, Decoded | CloseChannel)
    if result is not None:
        assert 0 <= result.channel < codec.num_channels


# --------------------------------------------------------------------------- negotiation


def test_parse_protocol_header() -> None:
    assert parse_protocol_header([]) == []
    assert parse_protocol_header(["v5.channel.k8s.io"]) == [V5_CHANNEL]
    assert parse_protocol_header(["v5.channel.k8s.io,v4.channel.k8s.io"]) == [
        V5_CHANNEL,
        V4_CHANNEL,
    ]
    assert parse_protocol_header(
        [" v4.channel.k8s.io , , channel.k8s.io ", "base64.channel.k8s.io"]
    ) == [
        V4_CHANNEL,
        CHANNEL,
        BASE64_CHANNEL,
    ]
    assert parse_protocol_header("\tv5.channel.k8s.io,\tv4.channel.k8s.io") == [
        V5_CHANNEL,
        V4_CHANNEL,
    ]
    assert parse_protocol_header([""]) == []


def test_negotiate_walks_the_clients_list() -> None:
    supported = REMOTECOMMAND_PROTOCOLS
    assert negotiate([V5_CHANNEL], supported) == V5_CHANNEL
    # The client's order wins over the server's preference.
    assert negotiate([V4_CHANNEL, V5_CHANNEL], supported) == V4_CHANNEL
    assert negotiate([BASE64_CHANNEL, V5_CHANNEL], supported) == BASE64_CHANNEL
    # Unknown entries are skipped.
    assert negotiate(["v6.channel.k8s.io", CHANNEL], supported) == CHANNEL
    assert negotiate(["v3.channel.k8s.io"], supported) is None


def test_negotiate_python_client_port_forward() -> None:
    # Newest Python client offers v5,v4 for port-forward; port-forward has no v5 -> v4 (§5a).
    offered = parse_protocol_header(["v5.channel.k8s.io,v4.channel.k8s.io"])
    assert negotiate(offered, PORTFORWARD_PROTOCOLS) == V4_CHANNEL


def test_negotiate_kubectl_tunnel() -> None:
    supported = (SPDY_TUNNEL_PORTFORWARD, *PORTFORWARD_PROTOCOLS)
    assert negotiate([SPDY_TUNNEL_PORTFORWARD], supported) == SPDY_TUNNEL_PORTFORWARD
    assert negotiate([SPDY_TUNNEL_PORTFORWARD], PORTFORWARD_PROTOCOLS) is None


def test_negotiate_is_case_sensitive() -> None:
    assert negotiate(["V5.channel.K8S.io"], REMOTECOMMAND_PROTOCOLS) is None


def test_negotiate_without_an_offer() -> None:
    assert negotiate([], REMOTECOMMAND_PROTOCOLS) is None
    assert negotiate([], (*REMOTECOMMAND_PROTOCOLS, NO_PROTOCOL)) == NO_PROTOCOL
    # An explicit offer does not fall back to "".
    assert negotiate(["v3.channel.k8s.io"], (NO_PROTOCOL,)) is None


@given(
    offered=st.lists(st.sampled_from([*ALL[:-1], "x", "v3.channel.k8s.io"]), max_size=6),
    supported=st.lists(st.sampled_from(ALL[:-1]), max_size=5),
)
def test_negotiate_picks_the_first_supported_offer(
    offered: list[str], supported: list[str]
) -> None:
    chosen = negotiate(offered, supported)
    common = [p for p in offered if p in supported]
    assert chosen == (common[0] if common else None)


# --------------------------------------------------------------------------- port-forward


def test_port_preamble() -> None:
    assert port_preamble(0, 8080) == bytes.fromhex("00901f")
    assert port_preamble(1, 8080) == bytes.fromhex("01901f")
    assert port_preamble(5, 443) == bytes.fromhex("05bb01")
    assert port_preamble(254, 65535) == bytes.fromhex("feffff")


def test_port_bytes_and_base64_preamble() -> None:
    assert port_bytes(8080) == b"\x90\x1f"
    codec = ChannelCodec(V4_BASE64_CHANNEL, num_channels=2)
    assert codec.encode(1, port_bytes(8080)) == "1kB8="


@pytest.mark.parametrize(("channel", "port"), [(-1, 80), (255, 80), (0, -1), (0, 65536)])
def test_port_preamble_ranges(channel: int, port: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        port_preamble(channel, port)


def test_port_channels() -> None:
    assert port_channels(0) == (0, 1)
    assert port_channels(1) == (2, 3)
    assert port_channels(7) == (14, 15)
    with pytest.raises(ValueError, match="negative"):
        port_channels(-1)


@given(channel=st.integers(0, 254), port=st.integers(0, 65535))
def test_port_preamble_matches_the_python_client_check(channel: int, port: int) -> None:
    # ws_client.py PortForward: len(frame) == 3 and frame[1] + (frame[2] << 8) == port
    frame = port_preamble(channel, port)
    assert len(frame) == 3 and frame[0] == channel
    assert frame[1] + (frame[2] << 8) == port


def test_parse_ports() -> None:
    assert parse_ports(["8080"]) == [8080]
    assert parse_ports(["8080,9090"]) == [8080, 9090]
    assert parse_ports(["80", "81,82", "80"]) == [80, 81, 82, 80]
    assert parse_ports("1,65535") == [1, 65535]
    assert parse_ports(["0080"]) == [80]  # ParseUint accepts leading zeros
    assert parse_ports(["0000000000065535"]) == [65535]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([], 'query parameter "port" is required'),
        ([""], 'query parameter "port" cannot be empty'),
        (["80", ""], 'query parameter "port" cannot be empty'),
        (["0"], 'port "0" must be > 0'),
        (["80,0"], 'port "80,0" must be > 0'),
        (
            ["80,x"],
            'unable to parse "80,x" as a port: strconv.ParseUint: parsing "x": invalid syntax',
        ),
        (
            ["80,"],
            'unable to parse "80," as a port: strconv.ParseUint: parsing "": invalid syntax',
        ),
        (
            ["65536"],
            'unable to parse "65536" as a port: strconv.ParseUint: parsing "65536": '
            "value out of range",
        ),
        (["-1"], 'unable to parse "-1" as a port: strconv.ParseUint: parsing "-1": invalid syntax'),
        (
            ["+80"],
            'unable to parse "+80" as a port: strconv.ParseUint: parsing "+80": invalid syntax',
        ),
        (
            [" 80"],
            'unable to parse " 80" as a port: strconv.ParseUint: parsing " 80": invalid syntax',
        ),
        (["1_000"], 'parsing "1_000": invalid syntax'),
        (["9" * 5000], "value out of range"),  # beyond int()'s digit limit, still Go's error
        (["00000"], 'port "00000" must be > 0'),
        (["\u0661"], 'parsing "\u0661": invalid syntax'),  # Arabic-Indic digit one
        (["8\t0"], 'unable to parse "8\\t0" as a port'),
        (["8\x000"], 'unable to parse "8\\x000" as a port'),
        (['8"0'], 'unable to parse "8\\"0" as a port'),
        (["8\u200b0"], 'unable to parse "8\\u200b0" as a port'),
        (["8\U000e00010"], 'unable to parse "8\\U000e00010" as a port'),
    ],
)
def test_parse_ports_errors_use_the_kubelet_wording(values: list[str], message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_ports(values)
    assert message in str(info.value)


def test_parse_ports_names_the_parameter() -> None:
    with pytest.raises(ValueError, match='^query parameter "ports" is required$'):
        parse_ports([], param="ports")


@given(st.lists(st.lists(st.integers(1, 65535), min_size=1, max_size=4), min_size=1, max_size=4))
def test_parse_ports_round_trip(groups: list[list[int]]) -> None:
    values = [",".join(map(str, group)) for group in groups]
    assert parse_ports(values) == [port for group in groups for port in group]
