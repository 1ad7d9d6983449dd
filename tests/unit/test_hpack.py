"""HPACK (agent/rpc/hpack.py): the RFC 7541 Appendix C examples, malformed blocks, encoder round trips."""

from __future__ import annotations

from fractions import Fraction

import pytest

from agent.rpc import hpack

REQUEST = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")]
REQUEST_2 = [*REQUEST, ("cache-control", "no-cache")]
REQUEST_3 = [
    (":method", "GET"),
    (":scheme", "https"),
    (":path", "/index.html"),
    (":authority", "www.example.com"),
    ("custom-key", "custom-value"),
]
REQUEST_TABLES = [
    ([(":authority", "www.example.com")], 57),
    ([("cache-control", "no-cache"), (":authority", "www.example.com")], 110),
    ([("custom-key", "custom-value"), ("cache-control", "no-cache"), (":authority", "www.example.com")], 164),
]

DATE_1 = "Mon, 21 Oct 2013 20:13:21 GMT"
DATE_2 = "Mon, 21 Oct 2013 20:13:22 GMT"
LOCATION = "https://www.example.com"
COOKIE = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
RESPONSES = [
    [(":status", "302"), ("cache-control", "private"), ("date", DATE_1), ("location", LOCATION)],
    [(":status", "307"), ("cache-control", "private"), ("date", DATE_1), ("location", LOCATION)],
    [
        (":status", "200"),
        ("cache-control", "private"),
        ("date", DATE_2),
        ("location", LOCATION),
        ("content-encoding", "gzip"),
        ("set-cookie", COOKIE),
    ],
]
RESPONSE_TABLES = [
    ([("location", LOCATION), ("date", DATE_1), ("cache-control", "private"), (":status", "302")], 222),
    ([(":status", "307"), ("location", LOCATION), ("date", DATE_1), ("cache-control", "private")], 222),
    ([("set-cookie", COOKIE), ("content-encoding", "gzip"), ("date", DATE_2)], 215),
]

# RFC 7541 C.3 (requests, no Huffman), C.4 (requests, Huffman), C.5 and C.6 (responses, table size 256)
C3 = [
    "828684410f7777772e6578616d706c652e636f6d",
    "828684be58086e6f2d6361636865",
    "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
]
C4 = [
    "828684418cf1e3c2e5f23a6ba0ab90f4ff",
    "828684be5886a8eb10649cbf",
    "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
]
C5 = [
    "4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a323120474d54"
    "6e1768747470733a2f2f7777772e6578616d706c652e636f6d",
    "4803333037c1c0bf",
    "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a69707738666f6f3d"
    "4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d6167653d333630303b2076657273696f6e3d31",
]
C6 = [
    "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3",
    "4883640effc1c0bf",
    "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdfcd5b3960d5af"
    "27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
]


def test_huffman_table_is_a_complete_canonical_code() -> None:
    codes = hpack.HUFFMAN_CODES
    assert len(codes) == 257
    assert sum(Fraction(1, 2**length) for _, length in codes) == 1  # complete and prefix-free
    assert codes[ord("/")] == (0x18, 6) and codes[hpack.EOS] == (0x3FFFFFFF, 30)
    # canonical: codes of one length are consecutive in symbol order, shorter codes come first
    order = sorted(range(257), key=lambda symbol: (codes[symbol][1], symbol))
    code, previous = 0, codes[order[0]][1]
    for position, symbol in enumerate(order):
        length = codes[symbol][1]
        if position:
            code = (code + 1) << (length - previous)
        previous = length
        assert codes[symbol][0] == code, f"symbol {symbol}"


def test_c1_integers() -> None:
    assert hpack.encode_integer(10, 5) == bytes([0b01010])
    assert hpack.encode_integer(1337, 5) == bytes([0b11111, 0b10011010, 0b00001010])
    assert hpack.encode_integer(42, 8) == bytes([42])
    assert hpack.decode_integer(bytes([0xFF, 0b10011010, 0b00001010]), 0, 5) == (1337, 3)


def test_c2_single_fields() -> None:
    decoder = hpack.Decoder()
    assert decoder.decode(bytes.fromhex("400a637573746f6d2d6b65790d637573746f6d2d686561646572")) == [
        ("custom-key", "custom-header")
    ]
    assert list(decoder.table) == [("custom-key", "custom-header")] and decoder.size == 55
    decoder = hpack.Decoder()
    assert decoder.decode(bytes.fromhex("040c2f73616d706c652f70617468")) == [(":path", "/sample/path")]
    assert decoder.decode(bytes.fromhex("100870617373776f726406736563726574")) == [("password", "secret")]
    assert decoder.decode(b"\x82") == [(":method", "GET")]
    assert not decoder.table and decoder.size == 0


@pytest.mark.parametrize("blocks", [C3, C4], ids=["C.3 plain", "C.4 huffman"])
def test_request_examples(blocks: list[str]) -> None:
    decoder = hpack.Decoder()
    for block, expected, (table, size) in zip(blocks, [REQUEST, REQUEST_2, REQUEST_3], REQUEST_TABLES, strict=True):
        assert decoder.decode(bytes.fromhex(block)) == expected
        assert list(decoder.table) == table
        assert decoder.size == size


@pytest.mark.parametrize("blocks", [C5, C6], ids=["C.5 plain", "C.6 huffman"])
def test_response_examples_with_eviction(blocks: list[str]) -> None:
    decoder = hpack.Decoder(max_table_size=256)
    for block, expected, (table, size) in zip(blocks, RESPONSES, RESPONSE_TABLES, strict=True):
        assert decoder.decode(bytes.fromhex(block)) == expected
        assert list(decoder.table) == table
        assert decoder.size == size


def test_huffman_round_trip_of_every_byte() -> None:
    data = bytes(range(256)) * 3
    assert hpack.huffman_decode(hpack.huffman_encode(data)) == data
    assert hpack.huffman_encode(b"www.example.com").hex() == "f1e3c2e5f23a6ba0ab90f4ff"


def test_table_size_update_evicts_and_is_bounded() -> None:
    decoder = hpack.Decoder()
    decoder.decode(bytes.fromhex(C3[0]))
    assert decoder.size == 57
    decoder.decode(b"\x20")  # size update to 0 empties the table
    assert not decoder.table and decoder.size == 0
    with pytest.raises(hpack.HpackError, match="exceeds the limit of 4096"):
        decoder.decode(hpack.encode_integer(4097, 5, 0x20))
    with pytest.raises(hpack.HpackError, match="after a header field"):
        hpack.Decoder().decode(b"\x82\x20")


def test_entry_larger_than_the_table_empties_it() -> None:
    decoder = hpack.Decoder(max_table_size=64)
    decoder.decode(bytes.fromhex(C3[0]))  # 57 bytes
    big = b"\x40" + hpack.encode_integer(5, 7) + b"x-big" + hpack.encode_integer(40, 7) + b"v" * 40
    assert decoder.decode(big) == [("x-big", "v" * 40)]
    assert not decoder.table and decoder.size == 0


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (b"\x80", "index 0"),
        (b"\xbe", "beyond the tables"),  # index 62 with an empty dynamic table
        (b"\xff\xff\xff", "ends inside an integer"),
        (b"\xff\xff\xff\xff\xff\xff\x7f", "integer too large"),
        (b"\x04\x0a/short", "runs past the end"),
        (b"\x04", "ends before a string literal"),
        (b"\x04\x7f\xff\xff\x03" + b"x" * 70000, "exceeds the limit"),
        (b"\x04\x82\xff\xff", "padding longer than 7 bits"),  # 16 one bits: a code cut short
        (b"\x04\x81\x1e", "not a prefix of EOS"),  # 'a' (00011) then padding 110
        (b"\x04\x84\xff\xff\xff\xff", "EOS"),
    ],
)
def test_malformed_blocks_raise_hpack_error(block: bytes, message: str) -> None:
    with pytest.raises(hpack.HpackError, match=message):
        hpack.Decoder().decode(block)


def test_huffman_padding_rules() -> None:
    assert hpack.huffman_decode(bytes([0b00011111])) == b"a"  # 'a' is 00011, then 3 padding ones
    with pytest.raises(hpack.HpackError, match="not a prefix of EOS"):
        hpack.huffman_decode(bytes([0b00011110]))
    with pytest.raises(hpack.HpackError, match="padding longer than 7 bits"):
        hpack.huffman_decode(bytes([0b00011111, 0xFF]))


def test_header_list_size_limit_keeps_the_table_in_step() -> None:
    decoder = hpack.Decoder(max_header_list_size=130)
    block = b"\x40" + hpack.encode_integer(3, 7) + b"x-a" + hpack.encode_integer(80, 7) + b"a" * 80
    with pytest.raises(hpack.HeaderListTooLarge, match="header list of 157 bytes exceeds the limit of 130"):
        decoder.decode(block + b"\x82")
    assert list(decoder.table) == [("x-a", "a" * 80)]  # decoded in full: the next block can use it
    assert decoder.decode(b"\xbe") == [("x-a", "a" * 80)]


def test_encoder_round_trips_through_the_decoder() -> None:
    headers = [
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("grpc-status", "0"),
        ("grpc-message", "caf%C3%A9 " + "x" * 300),
        ("accept-encoding", "gzip, deflate"),
    ]
    encoder = hpack.Encoder()
    block = encoder.encode(headers)
    assert block.startswith(b"\x88")  # :status 200 from the static table
    decoder = hpack.Decoder()
    assert decoder.decode(block) == headers
    assert not decoder.table  # the encoder never indexes
    encoder.set_peer_table_size(0)
    block = encoder.encode(headers[:1])
    assert block == b"\x20\x88"  # the lowered table size is signalled once
    assert encoder.encode(headers[:1]) == b"\x88"
    assert hpack.Decoder().decode(b"\x20\x88") == headers[:1]
