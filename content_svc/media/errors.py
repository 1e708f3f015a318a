"""Problems specific to media: every one is a ContentError, rendered by the app's error boundary."""

from __future__ import annotations

from content_svc.errors import ContentError, InvalidRequest, UnsupportedMediaType


class StorageUnavailable(ContentError):
    """The blob store failed (disk full, S3 unreachable): retryable, nothing was recorded."""

    status = 503
    slug = "storage-unavailable"
    title = "Media storage is unavailable"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.headers["Retry-After"] = "5"


class RequestTimeout(ContentError):
    status = 408
    slug = "request-timeout"
    title = "The request body stopped arriving"


class UploadTruncated(InvalidRequest):
    slug = "upload-truncated"
    title = "The body ended before its declared length"


class ContentTypeNotAllowed(UnsupportedMediaType):
    slug = "media-type-not-allowed"
    title = "This content type may not be uploaded"


class DigestMismatch(ContentError):
    status = 400
    slug = "digest-mismatch"
    title = "The body does not match its digest"


class ChecksumMismatch(ContentError):
    """tus checksum extension: the chunk was discarded."""

    status = 460
    slug = "checksum-mismatch"
    title = "Checksum Mismatch"


class TusVersionUnsupported(ContentError):
    status = 412
    slug = "tus-version-unsupported"
    title = "Unsupported tus version"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.headers["Tus-Version"] = "1.0.0"


class RangeNotSatisfiable(ContentError):
    status = 416
    slug = "range-not-satisfiable"
    title = "Range Not Satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(f"no requested range overlaps the {size} bytes of this media")
        self.headers["Content-Range"] = f"bytes */{size}"
        self.headers["Accept-Ranges"] = "bytes"
