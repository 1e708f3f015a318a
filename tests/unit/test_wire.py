"""The signal frame codec: layout, ranges, error paths, the incremental decoder and SSE rendering.

Byte layouts are written out by hand in hex rather than produced with ``struct``, so a mistake shared
by the codec and the test (wrong endianness, swapped fields) cannot cancel out.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pingpull import wire
from pingpull.errors import PingpullError, ProtocolError
from pingpull.wire import (
    FRAME_SIZE,
    MAX_U8,
    MAX_U16,
    MAX_U64,
    UNKNOWN_HEAD,
    VERSION,
    Frame,
    FrameDecoder,
    Kind,
    decode,
    encode_goaway,
    encode_hello,
    encode_new,
    encode_receipt,
    goaway_delay_units,
    to_sse_event,
)

u8 = st.integers(min_value=0, max_value=MAX_U8)
u16 = st.integers(min_value=0, max_value=MAX_U16)
u64 = st.integers(min_value=0, max_value=MAX_U64)
frames = st.builds(Frame, kind=u8, head=u64, ref=u64, arg=u16)

# NEW, head 0x0102030405060708, message 0x1112131415161718: every byte distinct, so any swapped or
# mis-sized field shows up.
NEW_HEX = "0101000001020304050607081112131415161718"
NEW_FRAME = Frame(kind=Kind.NEW, head=0x0102030405060708, ref=0x1112131415161718)


# -- constants and layout ---------------------------------------------------------------------------


def test_constants() -> None:
    assert FRAME_SIZE == 20
    assert VERSION == 1
    assert MAX_U64 == 18_446_744_073_709_551_615
    assert UNKNOWN_HEAD == MAX_U64
    assert [(k.name, k.value) for k in Kind] == [("HELLO", 0), ("NEW", 1), ("RECEIPT", 2), ("GOAWAY", 3)]


def test_exact_layout_of_a_known_frame() -> None:
    assert NEW_FRAME.encode() == bytes.fromhex(NEW_HEX)
    assert encode_new(0x0102030405060708, 0x1112131415161718) == bytes.fromhex(NEW_HEX)
    assert decode(bytes.fromhex(NEW_HEX)) == NEW_FRAME


@pytest.mark.parametrize(
    ("encoded", "expected_hex"),
    [
        (encode_hello(5, 30), "0100001e00000000000000050000000000000000"),
        (encode_new(7, 42), "010100000000000000000007000000000000002a"),
        (encode_receipt(256, 1), "0102000000000000000001000000000000000001"),
        (encode_goaway(1500), "0103000fffffffffffffffff0000000000000000"),
        (encode_goaway(250, head=9), "0103000300000000000000090000000000000000"),
    ],
    ids=["hello", "new", "receipt", "goaway-unknown-head", "goaway-known-head"],
)
def test_exact_layout_per_kind(encoded: bytes, expected_hex: str) -> None:
    assert encoded == bytes.fromhex(expected_hex)
    assert len(encoded) == FRAME_SIZE


# -- round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        (encode_hello(10, 25), Frame(Kind.HELLO, head=10, arg=25)),
        (encode_new(11, 99), Frame(Kind.NEW, head=11, ref=99)),
        (encode_receipt(12, 98), Frame(Kind.RECEIPT, head=12, ref=98)),
        (encode_goaway(3000, head=13), Frame(Kind.GOAWAY, head=13, arg=30)),
        (encode_goaway(3000), Frame(Kind.GOAWAY, head=UNKNOWN_HEAD, arg=30)),
    ],
    ids=["hello", "new", "receipt", "goaway", "goaway-unknown-head"],
)
def test_round_trip_every_kind(encoded: bytes, expected: Frame) -> None:
    frame = decode(encoded)
    assert frame == expected
    assert frame.kind is expected.kind
    assert frame.is_known_kind
    assert frame.encode() == encoded


@given(frames)
def test_round_trip_any_frame(frame: Frame) -> None:
    encoded = frame.encode()
    assert len(encoded) == FRAME_SIZE
    assert encoded[0] == VERSION
    assert decode(encoded) == frame


@given(head=u64, ref=u64, arg=u16)
def test_hot_path_encoders_match_frame_encode(head: int, ref: int, arg: int) -> None:
    assert encode_hello(head, arg) == Frame(Kind.HELLO, head=head, arg=arg).encode()
    assert encode_new(head, ref) == Frame(Kind.NEW, head=head, ref=ref).encode()
    assert encode_receipt(head, ref) == Frame(Kind.RECEIPT, head=head, ref=ref).encode()
    assert encode_goaway(arg * 100, head) == Frame(Kind.GOAWAY, head=head, arg=arg).encode()


def test_known_kind_given_as_plain_int_is_normalised() -> None:
    frame = Frame(kind=2, head=1, ref=1)
    assert frame.kind is Kind.RECEIPT
    assert frame == Frame(Kind.RECEIPT, head=1, ref=1)


def test_head_known_flag() -> None:
    assert Frame(Kind.NEW, head=MAX_U64 - 1).is_head_known
    assert not Frame(Kind.NEW, head=UNKNOWN_HEAD).is_head_known


# -- field boundaries -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "maximum"),
    [("kind", MAX_U8), ("head", MAX_U64), ("ref", MAX_U64), ("arg", MAX_U16)],
)
def test_frame_field_boundaries(field: str, maximum: int) -> None:
    base = {"kind": Kind.NEW, "head": 1, "ref": 1, "arg": 0}
    for ok in (0, maximum):
        frame = Frame(**{**base, field: ok})
        assert getattr(decode(frame.encode()), field) == ok
    for bad in (maximum + 1, -1, 2**70):
        with pytest.raises(ProtocolError, match=field):
            Frame(**{**base, field: bad})


@pytest.mark.parametrize("bad", [1.0, "1", None])
def test_frame_rejects_non_integers(bad: object) -> None:
    with pytest.raises(ProtocolError):
        Frame(Kind.NEW, head=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("head", [0, MAX_U64])
@pytest.mark.parametrize("value", [0, MAX_U64])
def test_encode_new_and_receipt_accept_boundaries(head: int, value: int) -> None:
    assert decode(encode_new(head, value)) == Frame(Kind.NEW, head=head, ref=value)
    assert decode(encode_receipt(head, value)) == Frame(Kind.RECEIPT, head=head, ref=value)


def test_encode_hello_accepts_boundaries() -> None:
    assert decode(encode_hello(0, 0)) == Frame(Kind.HELLO, head=0, arg=0)
    assert decode(encode_hello(MAX_U64, MAX_U16)) == Frame(Kind.HELLO, head=MAX_U64, arg=MAX_U16)


@pytest.mark.parametrize(
    "call",
    [
        lambda: encode_new(MAX_U64 + 1, 1),
        lambda: encode_new(-1, 1),
        lambda: encode_new(1, MAX_U64 + 1),
        lambda: encode_new(1, -1),
        lambda: encode_receipt(MAX_U64 + 1, 1),
        lambda: encode_receipt(1, -1),
        lambda: encode_hello(MAX_U64 + 1, 30),
        lambda: encode_hello(-1, 30),
        lambda: encode_hello(1, MAX_U16 + 1),
        lambda: encode_hello(1, -1),
        lambda: encode_goaway(100, head=MAX_U64 + 1),
        lambda: encode_goaway(100, head=-1),
        lambda: encode_goaway(-1),
        lambda: encode_new(1.5, 1),  # type: ignore[arg-type]
    ],
)
def test_hot_path_encoders_reject_out_of_range(call: object) -> None:
    assert callable(call)
    with pytest.raises(ProtocolError) as info:
        call()
    # One exception root for the package; struct.error must not leak out.
    assert isinstance(info.value, PingpullError)


# -- GOAWAY delay -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delay_ms", "units"),
    [
        (0, 0),
        (1, 1),
        (99, 1),
        (100, 1),
        (101, 2),
        (1500, 15),
        (1501, 16),
        (6_553_500, MAX_U16),
        (6_553_501, MAX_U16),
        (10**12, MAX_U16),
    ],
)
def test_goaway_delay_rounds_up_and_clamps(delay_ms: int, units: int) -> None:
    assert goaway_delay_units(delay_ms) == units
    assert decode(encode_goaway(delay_ms)).arg == units


@given(st.integers(min_value=0, max_value=6_553_500))
def test_goaway_delay_never_shorter_than_asked(delay_ms: int) -> None:
    units = goaway_delay_units(delay_ms)
    assert units * 100 >= delay_ms
    assert units * 100 - delay_ms < 100


def test_goaway_negative_delay_is_an_error() -> None:
    with pytest.raises(ProtocolError, match="delay"):
        goaway_delay_units(-1)


# -- decode errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", range(FRAME_SIZE))
def test_truncated_input(size: int) -> None:
    with pytest.raises(ProtocolError, match=f"truncated.*got {size} bytes"):
        decode(bytes.fromhex(NEW_HEX)[:size])


@pytest.mark.parametrize("size", [FRAME_SIZE + 1, FRAME_SIZE + 19, 2 * FRAME_SIZE, 4096])
def test_oversize_input(size: int) -> None:
    data = (bytes.fromhex(NEW_HEX) * (size // FRAME_SIZE + 1))[:size]
    with pytest.raises(ProtocolError, match=f"oversize.*got {size} bytes"):
        decode(data)


@pytest.mark.parametrize("version", [0, 2, 0xFF])
def test_unknown_version_is_an_error(version: int) -> None:
    data = bytes([version]) + bytes.fromhex(NEW_HEX)[1:]
    with pytest.raises(ProtocolError, match=f"version {version}"):
        decode(data)


@pytest.mark.parametrize("kind", [4, 0x7F, 0xFF])
def test_unknown_kind_decodes_and_is_flagged(kind: int) -> None:
    data = bytes.fromhex(f"01{kind:02x}abcd00000000000000050000000000000006")
    frame = decode(data)
    assert frame == Frame(kind=kind, head=5, ref=6, arg=0xABCD)
    assert not frame.is_known_kind
    assert not isinstance(frame.kind, Kind)
    assert frame.encode() == data


def test_reserved_fields_are_not_checked_on_decode() -> None:
    # NEW with a non-zero arg: tolerated, so a later revision of v1 can give it a meaning.
    data = bytes.fromhex("0101000100000000000000050000000000000006")
    assert decode(data) == Frame(Kind.NEW, head=5, ref=6, arg=1)


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=["bytes", "bytearray", "memoryview"])
def test_decode_accepts_buffer_types(wrap: type) -> None:
    assert decode(wrap(bytes.fromhex(NEW_HEX))) == NEW_FRAME


def test_decode_counts_memoryview_bytes_not_items() -> None:
    # 5 items of 4 bytes: len() says 5, but it is a whole 20-byte frame.
    view = memoryview(bytes.fromhex(NEW_HEX)).cast("I")
    assert len(view) == 5
    assert decode(view) == NEW_FRAME


# -- incremental decoder ----------------------------------------------------------------------------


def _stream(count: int) -> tuple[list[Frame], bytes]:
    frames_ = [Frame(Kind(i % 4), head=i, ref=i * 1000 + 1, arg=i % 7) for i in range(count)]
    return frames_, b"".join(f.encode() for f in frames_)


def test_decoder_needs_a_whole_frame() -> None:
    decoder = FrameDecoder()
    assert decoder.next_frame() is None
    decoder.feed(bytes.fromhex(NEW_HEX)[:19])
    assert decoder.next_frame() is None
    assert decoder.pending_bytes == 19
    decoder.feed(bytes.fromhex(NEW_HEX)[19:])
    assert decoder.next_frame() == NEW_FRAME
    assert decoder.next_frame() is None
    assert decoder.pending_bytes == 0


def test_decoder_byte_by_byte() -> None:
    expected, data = _stream(5)
    decoder = FrameDecoder()
    got: list[Frame] = []
    for i in range(len(data)):
        decoder.feed(data[i : i + 1])
        got.extend(decoder.frames())
        # A frame comes out exactly when its last byte arrives, not before.
        assert len(got) == (i + 1) // FRAME_SIZE
    assert got == expected


def test_decoder_several_frames_in_one_chunk() -> None:
    expected, data = _stream(7)
    decoder = FrameDecoder()
    decoder.feed(data + bytes.fromhex(NEW_HEX)[:3])
    assert list(decoder.frames()) == expected
    assert decoder.pending_bytes == 3


@given(st.lists(frames, max_size=20), st.data())
def test_decoder_any_chunking(expected: list[Frame], data: st.DataObject) -> None:
    stream = b"".join(f.encode() for f in expected)
    cuts = sorted(data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)))))
    decoder = FrameDecoder()
    got: list[Frame] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        decoder.feed(stream[start:end])
        got.extend(decoder.frames())
    decoder.feed_eof()
    assert decoder.next_frame() is None
    assert got == expected


def test_decoder_surfaces_unknown_kinds_in_order() -> None:
    unknown = Frame(kind=9, head=3, ref=4, arg=5)
    decoder = FrameDecoder()
    decoder.feed(encode_new(1, 1) + unknown.encode() + encode_new(2, 2))
    got = list(decoder.frames())
    assert got == [Frame(Kind.NEW, head=1, ref=1), unknown, Frame(Kind.NEW, head=2, ref=2)]
    assert [f.is_known_kind for f in got] == [True, False, True]


def test_decoder_accepts_buffer_types() -> None:
    decoder = FrameDecoder()
    raw = bytes.fromhex(NEW_HEX)
    decoder.feed(bytearray(raw[:7]))
    decoder.feed(memoryview(raw)[7:])
    assert decoder.next_frame() == NEW_FRAME


def _assert_poisoned(decoder: FrameDecoder) -> None:
    for use in (lambda: decoder.feed(encode_new(1, 1)), decoder.next_frame, decoder.feed_eof):
        with pytest.raises(ProtocolError, match="unusable after an earlier error") as info:
            use()
        assert isinstance(info.value.__cause__, ProtocolError)


def test_decoder_bad_version_poisons() -> None:
    decoder = FrameDecoder()
    bad = b"\x02" + bytes.fromhex(NEW_HEX)[1:]
    decoder.feed(encode_new(1, 1) + bad + encode_new(2, 2))
    # Frames before the bad one still come out; the bad one raises.
    assert decoder.next_frame() == Frame(Kind.NEW, head=1, ref=1)
    with pytest.raises(ProtocolError, match="version 2"):
        decoder.next_frame()
    # The good frame after it must not: the stream's alignment can no longer be trusted.
    _assert_poisoned(decoder)
    assert decoder.pending_bytes == 0


def test_decoder_frames_iterator_raises_on_bad_version() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_new(1, 1) + b"\x00" * FRAME_SIZE)
    got: list[Frame] = []
    with pytest.raises(ProtocolError, match="version 0"):
        got.extend(decoder.frames())
    assert got == [Frame(Kind.NEW, head=1, ref=1)]
    _assert_poisoned(decoder)


def test_decoder_max_buffer_guard() -> None:
    decoder = FrameDecoder(max_buffer_bytes=2 * FRAME_SIZE)
    decoder.feed(encode_new(1, 1) * 2)  # exactly at the limit: fine
    assert decoder.pending_bytes == 2 * FRAME_SIZE
    with pytest.raises(ProtocolError, match="max_buffer_bytes=40"):
        decoder.feed(b"\x01")
    _assert_poisoned(decoder)


def test_decoder_max_buffer_counts_only_undrained_bytes() -> None:
    decoder = FrameDecoder(max_buffer_bytes=FRAME_SIZE)
    for i in range(100):
        decoder.feed(encode_new(i, i))
        assert decoder.next_frame() == Frame(Kind.NEW, head=i, ref=i)


def test_decoder_max_buffer_must_hold_a_frame() -> None:
    with pytest.raises(ValueError, match="max_buffer_bytes"):
        FrameDecoder(max_buffer_bytes=FRAME_SIZE - 1)


def test_decoder_eof_after_whole_frames_is_clean() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_new(1, 1) * 2)
    decoder.feed_eof()
    assert len(list(decoder.frames())) == 2
    assert decoder.next_frame() is None


def test_decoder_eof_mid_frame_is_truncation() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_new(1, 1) + encode_new(2, 2)[:11])
    decoder.feed_eof()
    # The whole frame buffered before the cut still comes out first.
    assert decoder.next_frame() == Frame(Kind.NEW, head=1, ref=1)
    with pytest.raises(ProtocolError, match=r"truncated.*11 of 20"):
        decoder.next_frame()
    _assert_poisoned(decoder)


def test_decoder_feed_after_eof_is_an_error() -> None:
    decoder = FrameDecoder()
    decoder.feed_eof()
    with pytest.raises(ProtocolError, match="after end of stream"):
        decoder.feed(encode_new(1, 1))


# -- SSE rendering ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (Frame(Kind.NEW, head=42, ref=7), b'id: 42\nevent: new\ndata: {"head":42,"ref":7}\n\n'),
        (Frame(Kind.RECEIPT, head=43, ref=8), b'id: 43\nevent: receipt\ndata: {"head":43,"ref":8}\n\n'),
        (Frame(Kind.HELLO, head=0, arg=30), b'id: 0\nevent: hello\ndata: {"head":0,"heartbeat_s":30}\n\n'),
        (
            Frame(Kind.GOAWAY, head=44, arg=15),
            b'id: 44\nevent: goaway\ndata: {"head":44,"retry_ms":1500}\n\n',
        ),
        (Frame(Kind.NEW, head=UNKNOWN_HEAD, ref=7), b'event: new\ndata: {"head":null,"ref":7}\n\n'),
        (
            Frame(Kind.GOAWAY, head=UNKNOWN_HEAD, arg=MAX_U16),
            b'event: goaway\ndata: {"head":null,"retry_ms":6553500}\n\n',
        ),
        (
            Frame(Kind.HELLO, head=UNKNOWN_HEAD, arg=25),
            b'event: hello\ndata: {"head":null,"heartbeat_s":25}\n\n',
        ),
        (
            Frame(Kind.RECEIPT, head=MAX_U64 - 1, ref=MAX_U64),
            b"id: 18446744073709551614\nevent: receipt\n"
            b'data: {"head":18446744073709551614,"ref":18446744073709551615}\n\n',
        ),
    ],
    ids=[
        "new",
        "receipt",
        "hello",
        "goaway",
        "new-unknown-head",
        "goaway-unknown-head",
        "hello-unknown-head",
        "largest",
    ],
)
def test_sse_event_exact_bytes(frame: Frame, expected: bytes) -> None:
    assert to_sse_event(frame) == expected


@given(st.sampled_from(list(Kind)), u64, u64, u16)
def test_sse_data_is_compact_json(kind: Kind, head: int, ref: int, arg: int) -> None:
    event = to_sse_event(Frame(kind, head=head, ref=ref, arg=arg))
    assert event.endswith(b"\n\n")
    lines = event.decode("ascii").split("\n")[:-2]
    data = lines[-1].removeprefix("data: ")
    parsed = json.loads(data)
    assert json.dumps(parsed, separators=(",", ":")) == data
    assert parsed["head"] == (None if head == UNKNOWN_HEAD else head)
    assert lines[-2] == f"event: {kind.name.lower()}"
    assert (lines[0] == f"id: {head}") is (head != UNKNOWN_HEAD)
    assert len(lines) == (3 if head != UNKNOWN_HEAD else 2)


def test_sse_rejects_unknown_kind() -> None:
    with pytest.raises(ProtocolError, match="unknown signal frame kind 4"):
        to_sse_event(Frame(kind=4, head=1))


# -- purity -----------------------------------------------------------------------------------------


def test_wire_imports_no_io_runtime() -> None:
    # The codec must stay sans-IO so every runtime (gateway, SDK, benchmarks) can share it.
    tree = ast.parse(Path(wire.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    forbidden = {"trio", "asyncio", "socket", "anyio", "selectors", "ssl", "trio_websocket", "httpx"}
    assert imported, "the import scan found nothing; it is broken"
    assert not imported & forbidden
