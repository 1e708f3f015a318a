"""The tus 1.0 protocol's header grammar, pure (no I/O): versions, metadata, checksums, dates.

https://tus.io/protocols/resumable-upload (core, creation, creation-with-upload, termination,
expiration, checksum). The routes in content_svc/routes/tus.py apply these to requests.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from datetime import UTC, datetime
from email.utils import format_datetime

TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,creation-with-upload,termination,expiration,checksum"
CHECKSUM_ALGORITHMS = ("sha1", "sha256", "md5")
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
# Metadata keys whose value names the file's media type, in the order clients use them
# (tus-js-client and Uppy send `filetype`; others `content_type` or `mimetype`).
CONTENT_TYPE_KEYS = ("filetype", "content_type", "contentType", "mimetype", "type")
MAX_METADATA_CHARS = 4096

_KEY = re.compile(r"^[^\s,]{1,128}$")
_DIGITS = re.compile(r"^[0-9]{1,18}$")


class TusProtocolError(ValueError):
    """A tus header that does not follow the protocol; rendered as 400 by the routes."""


class UnsupportedChecksum(TusProtocolError):
    """The tus spec answers an unsupported checksum algorithm with 400 Bad Request."""


def parse_length(value: str | None, name: str) -> int | None:
    """A non-negative integer header (Upload-Length, Upload-Offset); None when absent."""
    if value is None:
        return None
    value = value.strip()
    if not _DIGITS.match(value):
        raise TusProtocolError(f"{name} must be a non-negative integer below 10**18")
    return int(value)


def parse_metadata(value: str | None) -> dict[str, str | None]:
    """`key base64,key2 base64,key3`: keys are unique, values base64 (may be absent)."""
    if value is None or not value.strip():
        return {}
    if len(value) > MAX_METADATA_CHARS:
        raise TusProtocolError(f"Upload-Metadata may be at most {MAX_METADATA_CHARS} characters")
    found: dict[str, str | None] = {}
    for pair in value.split(","):
        parts = pair.strip().split(" ")
        if len(parts) > 2 or not _KEY.match(parts[0]):
            raise TusProtocolError("Upload-Metadata must be comma-separated 'key base64value' pairs")
        key = parts[0]
        if key in found:
            raise TusProtocolError(f"Upload-Metadata repeats the key {key!r}")
        if len(parts) == 1 or parts[1] == "":
            found[key] = None
            continue
        try:
            found[key] = base64.b64decode(parts[1], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise TusProtocolError(f"Upload-Metadata value of {key!r} is not base64 of UTF-8 text") from exc
    return found


def content_type_from(metadata: dict[str, str | None]) -> str | None:
    for key in CONTENT_TYPE_KEYS:
        value = metadata.get(key)
        if value:
            return value
    return None


def parse_checksum(value: str | None) -> tuple[str, bytes] | None:
    """`Upload-Checksum: <algorithm> <base64 digest>` -> (algorithm, digest)."""
    if value is None:
        return None
    algorithm, _, encoded = value.strip().partition(" ")
    algorithm = algorithm.lower()
    if algorithm not in CHECKSUM_ALGORITHMS:
        names = ", ".join(CHECKSUM_ALGORITHMS)
        raise UnsupportedChecksum(f"Upload-Checksum algorithm must be one of {names}")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error as exc:
        raise TusProtocolError("Upload-Checksum digest is not base64") from exc
    if len(digest) != hashlib.new(algorithm).digest_size:
        raise TusProtocolError(f"Upload-Checksum digest has the wrong length for {algorithm}")
    return algorithm, digest


def http_date(epoch_ms: int) -> str:
    """RFC 9110 IMF-fixdate, as tus requires for Upload-Expires."""
    return format_datetime(datetime.fromtimestamp(epoch_ms / 1000, tz=UTC), usegmt=True)
