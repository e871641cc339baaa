"""Image decoding on real files made by Pillow: formats, EXIF orientation, pixel bombs, corrupt bytes."""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from triptych_workers.media.errors import (
    MediaDecodeError,
    MediaError,
    MediaLimitExceeded,
    UnsupportedMediaFormat,
)
from triptych_workers.media.image import (
    ImageLimits,
    decode_image,
    decode_image_async,
    probe_image,
    sniff_image_format,
)

from tests.media_factory import encode_image, gradient_array, noise_array, png_bomb
from tests.mutations import mutated
from tests.offloop import HandshakeExecutor, LoopNotAnswering

ALLOWED = [("JPEG", {"quality": 95}), ("PNG", {}), ("WEBP", {"lossless": True}), ("WEBP", {"quality": 90})]


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-decode")
    yield pool
    pool.shutdown(wait=True)


def two_colour(width: int = 40, height: int = 20) -> np.ndarray:
    """Left half red, right half blue: where each colour ends up tells which rotation was applied."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    return pixels


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF header is rewritten to claim ``width`` x ``height``."""
    data = bytearray(encode_image(gradient_array(16, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize(("fmt", "save"), ALLOWED, ids=str)
def test_allowed_formats_decode_to_rgb_with_their_pixels(fmt: str, save: dict[str, Any]) -> None:
    pixels = gradient_array(64, 48, seed=3)
    image = decode_image(encode_image(pixels, fmt, **save))
    assert image.mode == "RGB"
    assert image.size == (64, 48)
    error = np.abs(np.asarray(image).astype(int) - pixels.astype(int)).mean()
    assert error < (0.01 if save.get("lossless") or fmt == "PNG" else 6)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("RGBA", "PNG"), ("L", "PNG"), ("P", "PNG"), ("I;16", "PNG"), ("CMYK", "JPEG"), ("RGBA", "WEBP")],
)
def test_other_modes_are_converted_to_rgb(mode: str, fmt: str) -> None:
    source = Image.fromarray(gradient_array(32, 32)).convert("RGBA" if mode == "RGBA" else "RGB")
    if mode in {"L", "P", "CMYK"}:
        source = source.convert(mode)
    if mode == "I;16":
        source = Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60)
    assert source.mode == mode
    image = decode_image(encode_image(source, fmt))
    assert image.mode == "RGB"
    assert image.size == (32, 32)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize(
    ("orientation", "size", "probe"),
    [
        (1, (40, 20), {(5, 10): "red", (35, 10): "blue"}),  # as stored
        (3, (40, 20), {(5, 10): "blue", (35, 10): "red"}),  # rotated 180
        (6, (20, 40), {(10, 5): "red", (10, 35): "blue"}),  # stored rotated 90 CCW: turn clockwise
        (8, (20, 40), {(10, 5): "blue", (10, 35): "red"}),  # stored rotated 90 CW: turn counter-clockwise
        (2, (40, 20), {(5, 10): "blue", (35, 10): "red"}),  # mirrored
    ],
)
def test_exif_orientation_is_applied(
    fmt: str, orientation: int, size: tuple[int, int], probe: dict[tuple[int, int], str]
) -> None:
    data = encode_image(two_colour(), fmt, exif_orientation=orientation, quality=95)
    image = decode_image(data)
    assert image.size == size
    for xy, colour in probe.items():
        r, _, b = image.getpixel(xy)  # type: ignore[misc]
        assert (r > 200 and b < 60) if colour == "red" else (b > 200 and r < 60), (xy, image.getpixel(xy))
    # The tag is consumed: decoding yields upright pixels and no orientation left to apply twice.
    assert image.getexif().get(0x0112) in (None, 1)


def test_png_bomb_is_refused_from_the_header() -> None:
    # That no pixel is decoded first is checked below (test_pixel_cap_is_checked_before_any_pixel_is_decoded),
    # without a clock.
    bomb = png_bomb(50_000, 50_000)
    assert len(bomb) < 10_000  # tiny on disk, 7.5 GB decoded
    with pytest.raises(MediaLimitExceeded, match="image dimensions exceed"):
        decode_image(bomb)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_cap_between_pillows_warning_and_error_is_still_refused() -> None:
    # 100 MP: above our default cap (Pillow's 89.5 MP) but below Pillow's own hard refusal (179 MP), so only
    # our check stands between this header and a 300 MB allocation.
    with pytest.raises(MediaLimitExceeded, match="10000x10000"):
        decode_image(png_bomb(10_000, 10_000))
    with pytest.raises(MediaLimitExceeded):
        decode_image(jpeg_claiming(10_000, 10_000))


def test_pixel_cap_is_checked_before_any_pixel_is_decoded() -> None:
    # Its pixel data is not even zlib: a decoder that decoded first would fail with MediaDecodeError.
    garbage = png_bomb(100, 100, idat=b"not a zlib stream")
    with pytest.raises(MediaDecodeError):
        decode_image(garbage)
    with pytest.raises(MediaLimitExceeded):
        decode_image(garbage, ImageLimits(max_pixels=9_999))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_configurable_pixel_cap_is_inclusive(fmt: str) -> None:
    data = encode_image(gradient_array(100, 100), fmt)
    assert decode_image(data, ImageLimits(max_pixels=10_000)).size == (100, 100)
    with pytest.raises(MediaLimitExceeded):
        decode_image(data, ImageLimits(max_pixels=9_999))


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "ICO"])
def test_other_image_formats_are_refused_by_name(fmt: str) -> None:
    data = encode_image(gradient_array(32, 32), fmt)
    assert sniff_image_format(data) == fmt
    with pytest.raises(UnsupportedMediaFormat, match=fmt):
        decode_image(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello world",
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        b"\x00" * 64,
        b"RIFF\x00\x00\x00\x00WAVE",
    ],
)
def test_unrecognised_bytes_are_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaFormat):
        decode_image(data)


def test_allowlist_can_be_narrowed() -> None:
    jpeg = encode_image(gradient_array(16, 16), "JPEG")
    png = encode_image(gradient_array(16, 16), "PNG")
    limits = ImageLimits(allowed_formats=frozenset({"PNG"}))
    assert decode_image(png, limits).size == (16, 16)
    with pytest.raises(UnsupportedMediaFormat, match="JPEG"):
        decode_image(jpeg, limits)


def test_content_type_lies_do_not_matter_magic_bytes_decide() -> None:
    # A PNG named .jpg is a PNG: nothing but the bytes is consulted, so it decodes (and GIF-as-.png does not).
    assert sniff_image_format(encode_image(gradient_array(8, 8), "PNG")) == "PNG"
    with pytest.raises(UnsupportedMediaFormat):
        decode_image(encode_image(gradient_array(8, 8), "GIF"))


@pytest.mark.parametrize(("fmt", "save"), ALLOWED, ids=str)
@pytest.mark.parametrize("keep", [0.1, 0.25, 0.5, 0.75, 0.9])
def test_truncated_files_are_decode_errors(fmt: str, save: dict[str, Any], keep: float) -> None:
    data = encode_image(noise_array(64, 64), fmt, **save)
    with pytest.raises(MediaDecodeError):
        decode_image(data[: max(int(len(data) * keep), 12)])


@pytest.mark.parametrize(
    ("fmt", "corrupt"),
    [
        ("PNG", lambda d: d[:40] + bytes(b ^ 0x5A for b in d[40:60]) + d[60:]),  # CRC and zlib stream broken
        ("PNG", lambda d: d[:16] + b"\xff\xff\xff\xff" + d[20:]),  # IHDR width 4 billion, CRC wrong
        ("JPEG", lambda d: d[:3] + b"\x00" * 64),  # magic then nothing a JPEG parser accepts
        ("JPEG", lambda d: d[:2] + b"\xff\xc0\x00\x02" + d[2:]),  # an empty SOF segment
        ("WEBP", lambda d: d[:12] + b"VP8 " + b"\xff" * 32),  # chunk header pointing nowhere
        ("WEBP", lambda d: d[:30] + bytes(b ^ 0xFF for b in d[30:50]) + d[50:]),
    ],
)
def test_corrupt_files_are_decode_errors(fmt: str, corrupt: object) -> None:
    data = encode_image(noise_array(32, 32), fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    assert callable(corrupt)
    with pytest.raises(MediaDecodeError):
        decode_image(corrupt(data))


def test_limits_validate() -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        ImageLimits(max_pixels=0)
    with pytest.raises(ValueError, match="allowed_formats"):
        ImageLimits(allowed_formats=frozenset({"GIF"}))  # type: ignore[arg-type]


async def test_async_decode_uses_the_given_executor(executor: ThreadPoolExecutor) -> None:
    image = await decode_image_async(encode_image(gradient_array(50, 40), "PNG"), executor=executor)
    assert image.size == (50, 40)
    with pytest.raises(UnsupportedMediaFormat):
        await decode_image_async(b"GIF89a....", executor=executor)


async def test_large_decodes_leave_the_event_loop_free() -> None:
    data = encode_image(noise_array(3000, 2000), "JPEG", quality=95)
    with HandshakeExecutor(asyncio.get_running_loop()) as executor:
        for _ in range(3):
            image = await decode_image_async(data, executor=executor)
            assert image.size == (3000, 2000)
        assert executor.jobs == 3
        assert threading.get_ident() not in executor.job_threads


async def test_the_off_loop_probe_catches_a_decode_that_blocks_the_loop() -> None:
    """Control: the same decode, waited for synchronously on the loop, is reported as a blocked loop."""
    data = encode_image(noise_array(300, 200), "JPEG")
    with (
        HandshakeExecutor(asyncio.get_running_loop(), answer_timeout_s=0.5) as executor,
        pytest.raises(LoopNotAnswering, match="before the job"),
    ):
        executor.submit(decode_image, data).result()


# ------------------------------------------------------------------------------------------ property-based


def _valid_samples() -> list[bytes]:
    pixels = gradient_array(24, 16, seed=7)
    return [
        encode_image(pixels, "JPEG", quality=80),
        encode_image(pixels, "JPEG", quality=80, progressive=True),
        encode_image(pixels, "PNG"),
        encode_image(Image.fromarray(pixels).convert("P"), "PNG"),
        encode_image(pixels, "WEBP", quality=80),
        encode_image(pixels, "WEBP", lossless=True),
        encode_image(two_colour(), "JPEG", exif_orientation=6),
        png_bomb(64, 64),
    ]


SAMPLES = _valid_samples()


MAGIC_PREFIXES = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\x10\x00\x00\x00WEBPVP8 "]


@pytest.mark.timeout(180)
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=512),
        st.builds(lambda p, b: p + b, st.sampled_from(MAGIC_PREFIXES), st.binary(max_size=512)),
        mutated(lambda: SAMPLES),
        mutated(lambda: SAMPLES),  # listed twice: mutations of real files reach deepest
    )
)
def test_random_and_mutated_bytes_only_raise_media_errors(data: bytes) -> None:
    try:
        image = decode_image(data, ImageLimits(max_pixels=1_000_000))
    except MediaError as exc:
        event(type(exc).__name__)  # --hypothesis-show-statistics shows how deep the inputs got
        return
    event("decoded")
    assert image.mode == "RGB"
    assert image.width * image.height <= 1_000_000


# -- probe_image: the header alone, for images decoded elsewhere (serving.decodeImagesOn: encode) ------------


@pytest.mark.parametrize(("fmt", "save"), ALLOWED, ids=str)
def test_probe_gives_the_shape_decoding_gives(fmt: str, save: dict[str, Any]) -> None:
    data = encode_image(noise_array(37, 23), fmt, **save)
    assert probe_image(data) == np.asarray(decode_image(data)).shape[:2] == (23, 37)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "PNG"])
@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_probe_applies_the_exif_orientation_like_the_decode(fmt: str, orientation: int) -> None:
    data = encode_image(two_colour(), fmt, exif_orientation=orientation, quality=95)
    height, width = np.asarray(decode_image(data)).shape[:2]
    assert probe_image(data) == (height, width)
    assert (height, width) == ((40, 20) if orientation >= 5 else (20, 40))


def test_probe_decodes_nothing() -> None:
    """A file whose pixel data is cut off probes fine (its header is whole) and fails only when decoded."""
    data = encode_image(noise_array(64, 64), "PNG")
    truncated = data[: len(data) // 2]
    assert probe_image(truncated) == (64, 64)
    with pytest.raises(MediaDecodeError, match="truncated or corrupt"):
        decode_image(truncated)


def test_probe_refuses_what_the_header_shows() -> None:
    with pytest.raises(UnsupportedMediaFormat, match="GIF"):
        probe_image(encode_image(gradient_array(8, 8), "GIF"))
    with pytest.raises(MediaLimitExceeded):
        probe_image(png_bomb())
    with pytest.raises(MediaLimitExceeded):
        probe_image(encode_image(gradient_array(20, 10), "PNG"), ImageLimits(max_pixels=199))
