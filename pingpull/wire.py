"""The signal frame: a pure, sans-IO codec for the 20 bytes the gateway pushes to devices.

The signal channel only ever says "something happened, your inbox head is now N"; the content is pulled
over HTTP. So a frame is fixed-size and tiny, big-endian, ``struct`` format ``>BBHQQ``:

======  ====  =======  ==============================================================================
offset  size  field    meaning
======  ====  =======  ==============================================================================
0       1     version  always ``VERSION`` (1); anything else is a `ProtocolError`
1       1     kind     `Kind`: 0 HELLO, 1 NEW, 2 RECEIPT, 3 GOAWAY; other values decode fine (see below)
2       2     arg      HELLO: heartbeat interval (s); GOAWAY: reconnect delay hint (units of 100 ms); else 0
4       8     head     the user's inbox head seq after this event; 2**64-1 (``UNKNOWN_HEAD``): pull to learn
12      8     ref      NEW/RECEIPT: the message id; else 0
======  ====  =======  ==============================================================================

Why it looks like this:

* No I/O imports (no trio, asyncio or sockets), in the h11/wsproto style: bytes in, frames out. The same
  code serves the gateway, the client SDK, the benchmarks and the tests, whatever runtime carries the bytes.
* The gateway writes one frame per event to possibly very many connections, so the ``encode_*``
  functions return finished ``bytes`` through one precompiled `struct.Struct` and skip building a `Frame`.
  They lean on ``struct``'s own range checks (translated to `ProtocolError`), so the happy path costs one
  C call.
* Unknown kinds must survive decoding: a newer server may send kinds an older client has never heard of,
  and the client is meant to skip them (forward compatibility). That is why `Frame.kind` is a plain
  ``int`` (a `Kind` member whenever the value is known). An unknown *version*, by contrast, means the
  layout itself may differ, so nothing in the frame can be trusted and decoding fails.
* The fields documented as "else 0" are written as 0 but not checked on decode, for the same reason as
  unknown kinds: a later revision of version 1 can give them a meaning without breaking old readers.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, NoReturn

from pingpull.errors import ProtocolError

__all__ = [
    "FRAME_SIZE",
    "MAX_BUFFER_BYTES",
    "MAX_U8",
    "MAX_U16",
    "MAX_U64",
    "UNKNOWN_HEAD",
    "VERSION",
    "Frame",
    "FrameDecoder",
    "Kind",
    "decode",
    "encode_goaway",
    "encode_hello",
    "encode_new",
    "encode_receipt",
    "goaway_delay_units",
    "to_sse_event",
]

_STRUCT: Final = struct.Struct(">BBHQQ")

FRAME_SIZE: Final = 20
VERSION: Final = 1
MAX_U8: Final = 2**8 - 1
MAX_U16: Final = 2**16 - 1
MAX_U64: Final = 2**64 - 1
# The bus can lose its state (Redis restarted without persistence); rather than guess a head, it says
# so, and the client pulls to learn the truth. The inbox cursor is authoritative, the head only a hint.
UNKNOWN_HEAD: Final = MAX_U64

# GOAWAY carries its delay in units of 100 ms so that a u16 reaches ~109 minutes.
_GOAWAY_UNIT_MS: Final = 100

# Default for FrameDecoder: ~3,000 frames of backlog is far beyond anything a healthy reader accumulates,
# and small enough that a peer flooding a reader that has stopped draining cannot grow memory unbounded.
MAX_BUFFER_BYTES: Final = 64 * 1024

assert _STRUCT.size == FRAME_SIZE


class Kind(enum.IntEnum):
    """The frame kinds version 1 defines. A decoded `Frame` may carry other values; see `Frame.kind`."""

    HELLO = 0
    NEW = 1
    RECEIPT = 2
    GOAWAY = 3


_KINDS: Final[dict[int, Kind]] = {kind.value: kind for kind in Kind}

# Plain ints for the hot-path encoders: packing an IntEnum member goes through __index__, an int does not.
_HELLO: Final = int(Kind.HELLO)
_NEW: Final = int(Kind.NEW)
_RECEIPT: Final = int(Kind.RECEIPT)
_GOAWAY: Final = int(Kind.GOAWAY)


def _check_range(name: str, value: int, maximum: int) -> None:
    # isinstance first so a float or str fails with our error, not a TypeError from the comparison.
    if not isinstance(value, int) or not 0 <= value <= maximum:
        raise ProtocolError(f"signal frame field {name}={value!r} is outside 0..{maximum}")


@dataclass(frozen=True, slots=True)
class Frame:
    """One signal frame, decoded or about to be encoded.

    ``kind`` is an ``int`` so that kinds this code does not know survive decoding; a known value is
    normalised to its `Kind` member, so ``frame.kind is Kind.NEW`` works whichever way it was built.
    Every field is range-checked on construction, so a `Frame` always encodes.
    """

    kind: int
    head: int
    ref: int = 0
    arg: int = 0

    def __post_init__(self) -> None:
        _check_range("kind", self.kind, MAX_U8)
        _check_range("head", self.head, MAX_U64)
        _check_range("ref", self.ref, MAX_U64)
        _check_range("arg", self.arg, MAX_U16)
        # Frozen dataclass: object.__setattr__ is the sanctioned way to normalise in __post_init__.
        object.__setattr__(self, "kind", _KINDS.get(self.kind, self.kind))

    @property
    def is_known_kind(self) -> bool:
        """False for kinds from a newer protocol revision; clients skip such frames."""
        return isinstance(self.kind, Kind)

    @property
    def is_head_known(self) -> bool:
        """False when the sender lost track of the head (``UNKNOWN_HEAD``) and the client must pull."""
        return self.head != UNKNOWN_HEAD

    def encode(self) -> bytes:
        """The frame's 20 bytes on the wire."""
        return _STRUCT.pack(VERSION, self.kind, self.arg, self.head, self.ref)


def _pack(kind: int, arg: int, head: int, ref: int) -> bytes:
    try:
        return _STRUCT.pack(VERSION, kind, arg, head, ref)
    except struct.error as exc:
        # struct already checked every range (and rejected non-ints); only the message is ours.
        raise ProtocolError(
            f"cannot encode signal frame kind={kind} arg={arg!r} head={head!r} ref={ref!r}: {exc}"
        ) from exc


def encode_hello(head: int, heartbeat_interval_s: int) -> bytes:
    """HELLO, the first frame of every connection: the current head and the server's ping interval.

    Sending the head first is what lets a reconnecting client whose cursor already equals it skip the
    pull, so a reconnect storm does not become a database storm.
    """
    return _pack(_HELLO, heartbeat_interval_s, head, 0)


def encode_new(head: int, message_id: int) -> bytes:
    """NEW: message ``message_id`` landed in the inbox, which now ends at ``head``."""
    return _pack(_NEW, 0, head, message_id)


def encode_receipt(head: int, message_id: int) -> bytes:
    """RECEIPT: a delivery/read receipt about ``message_id``; ``head`` is the inbox head after it."""
    return _pack(_RECEIPT, 0, head, message_id)


def goaway_delay_units(reconnect_delay_ms: int) -> int:
    """Convert a reconnect delay in ms to the frame's units of 100 ms: rounded up, clamped to u16.

    Rounding up because the hint exists to spread reconnects over a drain window: reconnecting a little
    late is harmless, reconnecting early lands on a gateway that is still going away. Clamping (to
    about 109 minutes) rather than failing because a longer wait than that is not a useful hint anyway.
    """
    if not isinstance(reconnect_delay_ms, int) or reconnect_delay_ms < 0:
        raise ProtocolError(
            f"GOAWAY reconnect delay must be a non-negative int (ms), got {reconnect_delay_ms!r}"
        )
    return min(-(-reconnect_delay_ms // _GOAWAY_UNIT_MS), MAX_U16)


def encode_goaway(reconnect_delay_ms: int, head: int = UNKNOWN_HEAD) -> bytes:
    """GOAWAY: this gateway is draining; reconnect (elsewhere) after about ``reconnect_delay_ms``.

    Pass the device's current head when the gateway knows it, so the client can skip the pull; the
    default ``UNKNOWN_HEAD`` tells it to pull. The delay is converted by `goaway_delay_units`
    (rounded up to 100 ms, clamped at 6,553,500 ms).
    """
    return _pack(_GOAWAY, goaway_delay_units(reconnect_delay_ms), head, 0)


def _nbytes(data: bytes | bytearray | memoryview) -> int:
    # A memoryview's len() counts items, not bytes, when its format is not "B".
    return data.nbytes if isinstance(data, memoryview) else len(data)


def _from_fields(version: int, kind: int, arg: int, head: int, ref: int) -> Frame:
    if version != VERSION:
        raise ProtocolError(f"unsupported signal frame version {version} (this codec speaks {VERSION})")
    return Frame(kind=kind, head=head, ref=ref, arg=arg)


def decode(data: bytes | bytearray | memoryview) -> Frame:
    """Decode one whole frame, e.g. one WebSocket binary message, which must be exactly 20 bytes.

    Unknown kinds decode (check `Frame.is_known_kind`); a wrong length or version is a `ProtocolError`.
    """
    size = _nbytes(data)
    if size != FRAME_SIZE:
        what = "truncated" if size < FRAME_SIZE else "oversize"
        raise ProtocolError(f"{what} signal frame: got {size} bytes, expected exactly {FRAME_SIZE}")
    return _from_fields(*_STRUCT.unpack(data))


class FrameDecoder:
    """Incremental decoder for a byte stream of back-to-back frames (sans-IO, h11/wsproto style).

    Feed it whatever chunks the transport produced, in any sizes, then drain frames::

        decoder.feed(chunk)
        for frame in decoder.frames():
            ...

    Call `feed_eof` when the stream ends, so a frame cut off mid-way is an error rather than silently lost.
    ``max_buffer_bytes`` bounds the undecoded backlog: a reader that stops draining fails loudly instead
    of letting the peer grow its memory. After any `ProtocolError` the decoder is poisoned: the stream
    position is no longer trustworthy, so every later call raises too.
    """

    __slots__ = ("_buffer", "_eof", "_error", "_max_buffer_bytes")

    def __init__(self, max_buffer_bytes: int = MAX_BUFFER_BYTES) -> None:
        if max_buffer_bytes < FRAME_SIZE:
            raise ValueError(f"max_buffer_bytes must be at least {FRAME_SIZE}, got {max_buffer_bytes}")
        self._max_buffer_bytes = max_buffer_bytes
        self._buffer = bytearray()
        self._eof = False
        self._error: ProtocolError | None = None

    @property
    def pending_bytes(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the stream."""
        self._check_usable()
        if self._eof:
            self._poison(ProtocolError("signal stream data fed after end of stream"))
        backlog = len(self._buffer) + _nbytes(data)
        if backlog > self._max_buffer_bytes:
            self._poison(
                ProtocolError(
                    f"signal frame backlog of {backlog} bytes exceeds "
                    f"max_buffer_bytes={self._max_buffer_bytes}"
                )
            )
        self._buffer += data

    def feed_eof(self) -> None:
        """Mark the end of the stream; frames already buffered can still be drained."""
        self._check_usable()
        self._eof = True

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None if more bytes are needed (or the stream ended cleanly)."""
        self._check_usable()
        if len(self._buffer) < FRAME_SIZE:
            if self._eof and self._buffer:
                self._poison(
                    ProtocolError(
                        f"truncated signal frame at end of stream: {len(self._buffer)} of {FRAME_SIZE} bytes"
                    )
                )
            return None
        fields = _STRUCT.unpack_from(self._buffer)
        # Deleting a bytearray's prefix is O(1) amortised in CPython (it moves a start offset).
        del self._buffer[:FRAME_SIZE]
        try:
            return _from_fields(*fields)
        except ProtocolError as exc:
            self._poison(exc)

    def frames(self) -> Iterator[Frame]:
        """Every complete frame currently buffered, in order."""
        while (frame := self.next_frame()) is not None:
            yield frame

    def _check_usable(self) -> None:
        error = self._error
        if error is not None:
            raise ProtocolError(
                f"signal frame decoder is unusable after an earlier error: {error}"
            ) from error

    def _poison(self, error: ProtocolError) -> NoReturn:
        # Drop the buffer too: nothing in it can be decoded any more, so holding it only wastes memory.
        self._error = error
        self._buffer.clear()
        raise error


# The SSE rendering converts arg to plain units (seconds, milliseconds) so browser code never needs to
# know the wire's 100 ms unit.
_SSE_EVENT: Final[dict[Kind, str]] = {
    Kind.HELLO: "hello",
    Kind.NEW: "new",
    Kind.RECEIPT: "receipt",
    Kind.GOAWAY: "goaway",
}


def to_sse_event(frame: Frame) -> bytes:
    """Render a frame as one Server-Sent Events event, terminated by the blank line.

    Data is compact JSON: ``{"head":H,"ref":M}`` for new/receipt, ``{"head":H,"heartbeat_s":N}`` for
    hello, ``{"head":H,"retry_ms":N}`` (the wire's arg times 100) for goaway. The ``id:`` line is the
    head, so the browser's ``Last-Event-ID`` on reconnect is the last head it saw. For ``UNKNOWN_HEAD``
    the JSON says ``"head":null`` and the ``id:`` line is left out: an absent ``id`` leaves the browser's
    last event id untouched, whereas sending one would overwrite a real head with a meaningless number.

    Unknown kinds raise `ProtocolError`: a server only ever renders kinds it defines.
    """
    kind = frame.kind
    if not isinstance(kind, Kind):
        raise ProtocolError(f"cannot render unknown signal frame kind {kind} as an SSE event")
    # Every value is an int, so f-strings give exactly the compact JSON that json.dumps would, cheaper.
    head_known = frame.head != UNKNOWN_HEAD
    head_json = str(frame.head) if head_known else "null"
    if kind is Kind.HELLO:
        data = f'{{"head":{head_json},"heartbeat_s":{frame.arg}}}'
    elif kind is Kind.GOAWAY:
        data = f'{{"head":{head_json},"retry_ms":{frame.arg * _GOAWAY_UNIT_MS}}}'
    else:
        data = f'{{"head":{head_json},"ref":{frame.ref}}}'
    id_line = f"id: {frame.head}\n" if head_known else ""
    return f"{id_line}event: {_SSE_EVENT[kind]}\ndata: {data}\n\n".encode("ascii")
