"""Typed refusals of the media layer. The frontend maps each to an OpenAI-style 4xx carrying the reason."""

from __future__ import annotations

from triptych_workers.errors import ClientError


class MediaError(ClientError):
    """Base of every media refusal: the URL, the fetch or the content was not acceptable."""

    code = "invalid_media"


class InvalidMediaURL(MediaError):
    """The URL cannot be parsed, has an unsupported scheme, or is a malformed ``data:`` URL."""

    code = "invalid_media_url"


class MediaURLRefused(MediaError):
    """A policy refused the destination: SSRF guard (private, loopback, link-local, ...), domain allowlist,
    too many redirects, or local files disabled / outside the allowed directory."""

    status = 403
    code = "media_url_refused"


class MediaFetchError(MediaError):
    """The remote side failed: connection error, non-2xx status, or a body that ended early."""

    status = 422
    code = "media_fetch_failed"


class MediaTimeout(MediaFetchError):
    """The fetch did not finish within the modality's timeout."""

    status = 408
    code = "media_timeout"


class MediaTooLarge(MediaError):
    """The content exceeds the byte cap (checked while streaming, before the whole body is read)."""

    status = 413
    code = "media_too_large"


class UnsupportedMediaFormat(MediaError):
    """The bytes are not one of the allowed formats for their modality (magic bytes decide, not headers)."""

    status = 415
    code = "unsupported_media_format"


class MediaDecodeError(MediaError):
    """The bytes claim an allowed format but are truncated or corrupt."""

    status = 422
    code = "media_decode_failed"


class MediaLimitExceeded(MediaError):
    """Decoded content is beyond a cap: pixels (decompression bomb), frames, duration or resolution."""

    status = 413
    code = "media_limit_exceeded"
