"""Image decoding: fetched bytes -> an RGB ``PIL.Image`` upright as the camera meant it.

The order of the checks is the point of this module:

1. the format is decided by magic bytes, not by a URL suffix or a content type the server chose, and only
   JPEG/PNG/WEBP get past it (GIF/BMP/TIFF and everything else are refused by name);
2. Pillow parses only the header (``Image.open`` is lazy, and is restricted to the sniffed format so a PNG
   cannot be handed to some other plugin), and the pixel count is checked against ``max_pixels`` there,
   before a single pixel is decoded: a 50000x50000 PNG is a few hundred bytes on disk and 7.5 GB in memory;
3. only then is the image decoded, its EXIF orientation applied and its mode converted to RGB.

Every failure leaves as a typed :class:`~triptych_workers.media.errors.MediaError`. The decode itself is CPU
work: on the event loop use :func:`decode_image_async` with an executor owned by the application.
"""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from concurrent.futures import Executor
from functools import partial
from typing import Final, Literal

from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field

from triptych_workers.media.errors import MediaDecodeError, MediaLimitExceeded, UnsupportedMediaFormat

ImageFormat = Literal["JPEG", "PNG", "WEBP"]

#: Pillow's own decompression-bomb threshold (it warns above this and refuses above twice this).
PILLOW_MAX_IMAGE_PIXELS: Final = 89_478_485

# Magic bytes of the formats we accept, and of common ones we refuse by name so the error says what was sent.
_PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC: Final = b"\xff\xd8\xff"
_REFUSED_MAGIC: Final[tuple[tuple[bytes, str], ...]] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
)

# EXIF's Orientation tag, and the values that turn the image a quarter (ImageOps.exif_transpose's 5-8).
_EXIF_ORIENTATION: Final = 0x0112
_QUARTER_TURNS: Final = frozenset({5, 6, 7, 8})

# What Pillow's decoders raise on truncated or corrupt input. Deliberately a list and not ``Exception``: a
# TypeError or RuntimeError from our own code is a server bug and must reach the 500 handler, not a 4xx.
_CORRUPT_INPUT_ERRORS: Final = (
    OSError,  # includes UnidentifiedImageError and "image file is truncated"
    SyntaxError,  # Pillow's "broken PNG file" / "not a JPEG file"
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    struct.error,
    zlib.error,
)


class ImageLimits(BaseModel):
    """What an image may be. The defaults follow the seed (JPEG/PNG/WEBP) and Pillow's bomb threshold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_pixels: int = Field(
        default=PILLOW_MAX_IMAGE_PIXELS,
        gt=0,
        description="Largest width*height accepted, checked from the header before decoding. Pillow's own "
        "hard guard (twice its MAX_IMAGE_PIXELS) still applies above that and is reported the same way.",
    )
    allowed_formats: frozenset[ImageFormat] = Field(default=frozenset({"JPEG", "PNG", "WEBP"}), min_length=1)


def sniff_image_format(data: bytes) -> str | None:
    """Name the image format by its magic bytes (``"JPEG"``, ``"PNG"``, ``"WEBP"``, ``"GIF"``, ...), or None.

    Pure: no Pillow involved, so the allowlist decision does not depend on which plugins happen to be loaded.
    """
    if data.startswith(_JPEG_MAGIC):
        return "JPEG"
    if data.startswith(_PNG_MAGIC):
        return "PNG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in _REFUSED_MAGIC:
        if data.startswith(magic):
            return name
    return None


def _open_checked(data: bytes, limits: ImageLimits) -> tuple[Image.Image, str]:
    """Steps 1 and 2 of the module docstring: the sniffed format allowed, the header parsed, the pixel count
    within the limit. The image is opened lazily: no pixel is decoded yet."""
    fmt = sniff_image_format(data)
    if fmt is None:
        raise UnsupportedMediaFormat("image bytes are not a recognised image format (JPEG, PNG or WEBP)")
    if fmt not in limits.allowed_formats:
        allowed = ", ".join(sorted(limits.allowed_formats))
        raise UnsupportedMediaFormat(f"image format {fmt} is not allowed (allowed: {allowed})")
    try:
        # Header only: Image.open is lazy. ``formats`` pins the plugin to the sniffed one.
        image = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        raise MediaLimitExceeded(f"image dimensions exceed the decompression-bomb limit: {exc}") from exc
    except _CORRUPT_INPUT_ERRORS as exc:
        raise MediaDecodeError(f"{fmt} image header could not be parsed: {_describe(exc)}") from exc
    width, height = image.size
    if width * height > limits.max_pixels:
        image.close()
        raise MediaLimitExceeded(
            f"image is {width}x{height} = {width * height} pixels, above the limit of {limits.max_pixels}"
        )
    return image, fmt


def probe_image(data: bytes, limits: ImageLimits | None = None) -> tuple[int, int]:
    """``(height, width)`` of the image :func:`decode_image` would return, from the header alone.

    The same refusals as :func:`decode_image` up to the header (format, pixel limit), and the EXIF
    orientation applied to the size (a quarter turn swaps the sides), but no pixel decoded: what a caller
    needs to plan for an image that is decoded somewhere else. Bytes corrupt past the header are only found
    by the decode. Cheap enough for the event loop (microseconds for a PNG, a JPEG's EXIF block at most).
    """
    image, fmt = _open_checked(data, limits or ImageLimits())
    with image:
        width, height = image.size
        try:
            # Pillow's base getexif reads what the header parse gathered (EXIF, XMP orientation); the PNG
            # plugin's override would decode the whole image to look for chunks after the pixel data. An
            # orientation only found there makes the decode disagree with this size, which the decoding
            # side refuses (a 400), never a wrong prompt.
            orientation = Image.Image.getexif(image).get(_EXIF_ORIENTATION, 1)
        except _CORRUPT_INPUT_ERRORS as exc:
            raise MediaDecodeError(f"{fmt} image metadata could not be parsed: {_describe(exc)}") from exc
    return (width, height) if orientation in _QUARTER_TURNS else (height, width)


def decode_image(data: bytes, limits: ImageLimits | None = None) -> Image.Image:
    """Decode ``data`` into a fully loaded RGB image with its EXIF orientation applied.

    Raises :class:`UnsupportedMediaFormat` for anything but the allowed formats, :class:`MediaLimitExceeded`
    when the header claims more than ``limits.max_pixels`` pixels (before decoding), and
    :class:`MediaDecodeError` for truncated or corrupt bytes. Blocking: see :func:`decode_image_async`.
    """
    image, fmt = _open_checked(data, limits or ImageLimits())
    with image:
        try:
            image.load()
            upright = ImageOps.exif_transpose(image)
            return _to_rgb(upright)
        except Image.DecompressionBombError as exc:  # a later frame/tile can still claim more
            raise MediaLimitExceeded(f"image exceeds the decompression-bomb limit: {exc}") from exc
        except _CORRUPT_INPUT_ERRORS as exc:
            raise MediaDecodeError(f"{fmt} image is truncated or corrupt: {_describe(exc)}") from exc


async def decode_image_async(
    data: bytes, limits: ImageLimits | None = None, *, executor: Executor
) -> Image.Image:
    """:func:`decode_image` run on ``executor`` so the event loop keeps serving while pixels are decoded.

    The executor belongs to the caller (the app's lifespan): this module never creates thread pools.
    Cancelling the awaiting task abandons the result; the decode in the worker thread runs to completion.
    """
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, partial(decode_image, data, limits))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        # Going through RGBA keeps Pillow from warning about palette transparency; alpha is then dropped,
        # exactly as a direct RGB conversion of an RGBA image does.
        image = image.convert("RGBA")
    return image.convert("RGB")


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
