"""What the audio and video decoders share: opening bytes with PyAV in a forced demuxer, mapping FFmpeg's
failures to typed errors, and refusing codecs outside an allowlist."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Final, TypeVar

import av
import av.error
from av.codec.context import CodecContext
from av.container import InputContainer

from triptych_workers.media.errors import MediaDecodeError, UnsupportedMediaFormat

T = TypeVar("T")

# What PyAV/FFmpeg raise on truncated or corrupt input (besides our own typed errors, which pass through).
CORRUPT_INPUT_ERRORS: Final = (av.error.FFmpegError, EOFError, OSError, ValueError, IndexError)


def describe(exc: BaseException) -> str:
    """A bounded one-line reason for a client-facing error."""
    return (str(exc) or type(exc).__name__)[:200]


def decode_container(data: bytes, container_name: str, kind: str, decode: Callable[[InputContainer], T]) -> T:
    """Open ``data`` with the demuxer ``container_name`` only (so a playlist or concat file can never make
    FFmpeg open other files) and run ``decode`` on it; FFmpeg failures become MediaDecodeError."""
    try:
        with av.open(
            io.BytesIO(data), mode="r", format=container_name, metadata_errors="replace"
        ) as container:
            return decode(container)
    except CORRUPT_INPUT_ERRORS as exc:
        raise MediaDecodeError(f"{container_name} {kind} is truncated or corrupt: {describe(exc)}") from exc


def allowed_codec(ctx: CodecContext | None, kind: str, allowed: frozenset[str]) -> str:
    """The stream's codec name, refused unless allowlisted."""
    # PyAV's stubs say never None, but it is when FFmpeg has no decoder for the stream's codec id.
    codec = str(ctx.name) if ctx is not None else "unknown"
    if codec not in allowed:
        raise UnsupportedMediaFormat(f"{kind} codec {codec!r} is not allowed")
    return codec
