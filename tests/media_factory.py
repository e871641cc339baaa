"""Real media made on the spot for tests and benchmarks: images, videos and audio with known content.

Plain functions returning encoded bytes, so any test (unit, integration, bench) can import them. Content is
chosen so decoders can be checked, not just run: image colours and gradients, video frames whose index is
drawn as a barcode that survives lossy codecs and resizing, audio sine tones whose frequency is measurable.
"""

from __future__ import annotations

import io
import struct
import zlib
from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt
from PIL import Image

# ---------------------------------------------------------------------------------------------- images


def gradient_array(width: int, height: int, seed: int = 0) -> npt.NDArray[np.uint8]:
    """A smooth RGB image (compresses like a photo, unlike noise) that differs with ``seed``."""
    y, x = np.mgrid[0:height, 0:width]
    r = (x * 255 // max(width - 1, 1) + seed * 37) % 256
    g = (y * 255 // max(height - 1, 1) + seed * 91) % 256
    b = ((x + y) * 127 // max(width + height - 2, 1) + seed * 53) % 256
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def noise_array(width: int, height: int, seed: int = 0) -> npt.NDArray[np.uint8]:
    """Random RGB pixels: the worst case for codecs (large files, slow decodes)."""
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def encode_image(
    pixels: npt.NDArray[np.uint8] | Image.Image,
    fmt: str,
    *,
    exif_orientation: int | None = None,
    **save: object,
) -> bytes:
    """Encode ``pixels`` as ``fmt`` (Pillow's name: JPEG, PNG, WEBP, GIF, BMP, TIFF, ...).

    ``exif_orientation`` writes an EXIF Orientation tag (1..8) as a camera does, pixels left as stored.
    """
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    if fmt in {"JPEG", "BMP"} and image.mode not in {"RGB", "L"}:
        image = image.convert("RGB")
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        save["exif"] = exif.tobytes()
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def png_bomb(width: int = 50_000, height: int = 50_000, *, idat: bytes | None = None) -> bytes:
    """A valid-looking PNG whose IHDR claims ``width`` x ``height`` RGB pixels, a few hundred bytes on disk.

    The IDAT holds one compressed row only (or ``idat`` verbatim): a safe decoder refuses from the header and
    never looks at it.
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    if idat is None:
        idat = zlib.compress(b"\x00" + b"\x00" * 3 * min(width, 1024))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------- video

#: Bits of the frame-index barcode; indices up to 2**BARCODE_BITS - 1 are readable back.
BARCODE_BITS = 8


def barcode_frame(index: int, width: int, height: int) -> npt.NDArray[np.uint8]:
    """A frame showing ``index`` as ``BARCODE_BITS`` vertical stripes, white for 1 (bit 0 leftmost).

    Wide flat stripes survive lossy codecs, chroma subsampling and resizing, so the index reads back exactly.
    """
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    stripe = width // BARCODE_BITS
    for bit in range(BARCODE_BITS):
        if index >> bit & 1:
            frame[:, bit * stripe : (bit + 1) * stripe] = 255
    return frame


def read_barcode(frame: npt.NDArray[np.uint8]) -> int:
    """The index :func:`barcode_frame` drew, read from the centre of each stripe of a (H, W, 3) frame."""
    height, width = frame.shape[:2]
    stripe = width / BARCODE_BITS
    value = 0
    for bit in range(BARCODE_BITS):
        centre = int((bit + 0.5) * stripe)
        lo, hi = max(int(centre - stripe / 4), 0), max(int(centre + stripe / 4), centre + 1)
        if frame[height // 4 : 3 * height // 4, lo:hi].mean() > 127:
            value |= 1 << bit
    return value


def encode_video(
    frames: list[npt.NDArray[np.uint8]],
    *,
    container: str = "mp4",
    codec: str = "libx264",
    fps: int = 25,
    options: dict[str, str] | None = None,
) -> bytes:
    """Encode RGB frames (all the same size, even dimensions) with PyAV into ``container``/``codec``."""
    height, width = frames[0].shape[:2]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=Fraction(fps, 1), options=options or {})
        assert isinstance(stream, av.VideoStream)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        for pixels in frames:
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def indexed_video(
    num_frames: int,
    *,
    width: int = 64,
    height: int = 48,
    container: str = "mp4",
    codec: str = "libx264",
    fps: int = 25,
) -> bytes:
    """A video whose frame ``i`` shows ``i`` as a barcode (see :func:`read_barcode`)."""
    frames = [barcode_frame(i, width, height) for i in range(num_frames)]
    return encode_video(frames, container=container, codec=codec, fps=fps)


# ---------------------------------------------------------------------------------------------- audio


def sine(frequency: float, seconds: float, rate: int, *, amplitude: float = 0.5) -> npt.NDArray[np.float32]:
    """A sine tone as float32 samples."""
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def encode_audio(
    samples: npt.NDArray[np.float32],
    rate: int,
    *,
    container: str,
    codec: str,
    channels: int = 1,
    bit_rate: int | None = None,
) -> bytes:
    """Encode mono float samples (duplicated to ``channels``) with PyAV into ``container``/``codec``.

    Frames are handed over in 1024-sample chunks; FFmpeg's encoder fifo re-chunks for codecs that need
    other frame sizes (mp3: 1152, opus: 960).
    """
    layout = "mono" if channels == 1 else "stereo"
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        assert isinstance(stream, av.AudioStream)
        stream.layout = layout
        if bit_rate is not None:
            stream.bit_rate = bit_rate
        planar = np.tile(samples, (channels, 1))
        formats = stream.codec_context.codec.audio_formats
        assert formats, f"{codec} names no sample format"
        resampler = av.AudioResampler(format=formats[0].name, layout=layout, rate=rate)
        frame_size = stream.codec_context.frame_size or 1024
        pts = 0
        for start in range(0, planar.shape[1], frame_size):
            piece = np.ascontiguousarray(planar[:, start : start + frame_size])
            frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout=layout)
            frame.sample_rate = rate
            frame.pts = pts
            pts += piece.shape[1]
            for converted in resampler.resample(frame):
                out.mux(stream.encode(converted))
        for converted in resampler.resample(None):
            out.mux(stream.encode(converted))
        out.mux(stream.encode(None))
    return buf.getvalue()


def dominant_frequency(samples: npt.NDArray[np.float32], rate: int) -> float:
    """The frequency (Hz) with the most energy, by FFT with a Hann window."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def wav_bytes(samples: npt.NDArray[np.float32], rate: int) -> bytes:
    """16-bit PCM WAV, the simplest container (see :func:`encode_audio` for the others)."""
    return encode_audio(samples, rate, container="wav", codec="pcm_s16le")
