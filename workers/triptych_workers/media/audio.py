"""Audio decoding with PyAV: fetched bytes -> mono ``float32`` samples at the model's rate (16 kHz default).

The container is decided by magic bytes (WAV, FLAC, Ogg, MP3) and that demuxer is forced, so FFmpeg's probing
never reaches formats that open other files or URLs. Duration is capped from the header when the container
states it and again on the decoded samples (a header can lie). Downmix and resampling are FFmpeg's
(swresample), done while decoding so memory stays proportional to the output, not to the source.

Blocking CPU work: on the event loop use :func:`decode_audio_async` with the application's executor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import Final

import av
import av.error
import numpy as np
import numpy.typing as npt
from av.container import InputContainer
from pydantic import BaseModel, ConfigDict, Field

from triptych_workers.media.errors import MediaDecodeError, MediaLimitExceeded, UnsupportedMediaFormat
from triptych_workers.media.pyav import allowed_codec, decode_container

#: Decoders we run on untrusted audio, by FFmpeg decoder name: what wav/mp3/flac/ogg files carry.
ALLOWED_AUDIO_CODECS: Final = frozenset(
    {
        "pcm_s16le",
        "pcm_s24le",
        "pcm_s32le",
        "pcm_u8",
        "pcm_f32le",
        "pcm_f64le",
        "pcm_alaw",
        "pcm_mulaw",
        "mp3",
        "mp3float",
        "flac",
        "vorbis",
        "libvorbis",
        "opus",
        "libopus",
    }
)

# Containers whose header states the full duration, so a cut file is recognised as one (the formats decode
# cleanly up to the cut otherwise): FLAC's STREAMINFO sample count, MP3's Xing/Info frame count (written by
# LAME and FFmpeg; a CBR file without one is estimated from its bitrate, which the slack covers). WAV is
# checked on its RIFF size instead (FFmpeg caps a WAV's duration at the bytes present). Ogg is left out:
# FFmpeg takes its duration from the last page actually present, so a cut Ogg file is just a shorter one.
_DURATION_IN_HEADER: Final = frozenset({"flac", "mp3"})
_RIFF_SIZE_UNKNOWN: Final = (0, 0xFFFFFFFF)  # what streaming writers put before they know the length

# What PyAV raises on truncated or corrupt input. Not ``Exception``: bugs of ours must reach the 500 handler.


class AudioOptions(BaseModel):
    """Target rate and caps. 16 kHz mono is what Whisper-style encoders take."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sample_rate: int = Field(default=16_000, ge=1_000, le=384_000)
    max_duration_s: float = Field(default=600.0, gt=0)


@dataclass(frozen=True, slots=True)
class DecodedAudio:
    """Mono samples in [-1, 1] at ``sample_rate``."""

    samples: npt.NDArray[np.float32]  # shape (N,)
    sample_rate: int
    source_sample_rate: int
    source_channels: int
    container: str
    codec: str

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


def sniff_audio_container(data: bytes) -> str | None:
    """The demuxer for ``data`` by magic bytes: ``"wav"``, ``"flac"``, ``"ogg"``, ``"mp3"`` or None."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data.startswith(b"fLaC"):
        return "flac"
    if data.startswith(b"OggS"):
        return "ogg"
    if data.startswith(b"ID3") or _is_mpeg_audio_frame_header(data):
        return "mp3"
    return None


def riff_shortfall(data: bytes) -> int:
    """How many bytes a RIFF file lacks by its own size field (0 when complete or the size is unknown).

    One byte of slack: writers differ on whether the last chunk's pad byte is counted.
    """
    if len(data) < 8:
        return 0
    declared = int.from_bytes(data[4:8], "little")
    if declared in _RIFF_SIZE_UNKNOWN:
        return 0
    return max(declared + 8 - len(data) - 1, 0)


def _is_mpeg_audio_frame_header(data: bytes) -> bool:
    """An MPEG audio frame sync (11 set bits) with a real layer: ADTS AAC shares the sync but has layer 0."""
    return len(data) >= 2 and data[0] == 0xFF and (data[1] & 0xE0) == 0xE0 and (data[1] & 0x06) != 0


def decode_audio(data: bytes, options: AudioOptions | None = None) -> DecodedAudio:
    """Decode ``data`` to mono float32 at ``options.sample_rate``.

    Raises :class:`UnsupportedMediaFormat` (container or codec not allowed), :class:`MediaLimitExceeded`
    (longer than ``max_duration_s``) or :class:`MediaDecodeError` (truncated/corrupt, no audio).
    """
    options = options or AudioOptions()
    container_name = sniff_audio_container(data)
    if container_name is None:
        raise UnsupportedMediaFormat("audio bytes are not WAV, FLAC, Ogg or MP3")
    if container_name == "wav" and riff_shortfall(data) > 0:
        raise MediaDecodeError(f"wav audio is truncated: {riff_shortfall(data)} bytes missing")
    return decode_container(
        data,
        container_name,
        "audio",
        partial(_decode_open_container, container_name=container_name, options=options),
    )


async def decode_audio_async(
    data: bytes, options: AudioOptions | None = None, *, executor: Executor
) -> DecodedAudio:
    """:func:`decode_audio` on the caller's ``executor`` (owned by the app's lifespan, not by this module)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, partial(decode_audio, data, options))


def _decode_open_container(
    container: InputContainer, container_name: str, options: AudioOptions
) -> DecodedAudio:
    if not container.streams.audio:
        raise MediaDecodeError(f"{container_name} file has no audio stream")
    stream = container.streams.audio[0]
    ctx = stream.codec_context
    codec = allowed_codec(ctx, "audio", ALLOWED_AUDIO_CODECS)
    declared_s = container.duration / av.time_base if container.duration is not None else None
    if declared_s is not None and declared_s > options.max_duration_s:
        raise MediaLimitExceeded(_too_long(declared_s, options))

    max_samples = int(options.max_duration_s * options.sample_rate) + 1
    resampler = av.AudioResampler(format="flt", layout="mono", rate=options.sample_rate)
    chunks: list[npt.NDArray[np.float32]] = []
    total = 0
    source_rate = int(ctx.sample_rate or 0)
    source_channels = int(ctx.channels or 0)
    for frame in _decoded_frames(container, stream):
        source_rate = source_rate or int(frame.sample_rate)
        source_channels = source_channels or len(frame.layout.channels)
        for out in resampler.resample(frame):
            chunk = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            chunks.append(chunk)
            total += len(chunk)
        if total > max_samples:
            raise MediaLimitExceeded(_too_long(total / options.sample_rate, options))
    # What the resampler's filter still holds.
    chunks.extend(
        out.to_ndarray().reshape(-1).astype(np.float32, copy=False) for out in resampler.resample(None)
    )
    if not chunks:
        raise MediaDecodeError(f"{container_name} file has no decodable audio")
    samples = np.concatenate(chunks)
    if len(samples) > max_samples:
        raise MediaLimitExceeded(_too_long(len(samples) / options.sample_rate, options))
    decoded_s = len(samples) / options.sample_rate
    if (
        container_name in _DURATION_IN_HEADER
        and declared_s is not None
        and decoded_s < declared_s - max(0.25, 0.05 * declared_s)
    ):
        raise MediaDecodeError(
            f"{container_name} audio is truncated: the header says {declared_s:.2f} s, "
            f"the stream holds {decoded_s:.2f} s"
        )
    return DecodedAudio(
        samples=samples,
        sample_rate=options.sample_rate,
        source_sample_rate=source_rate,
        source_channels=source_channels,
        container=container_name,
        codec=codec,
    )


def _decoded_frames(container: InputContainer, stream: av.AudioStream) -> Iterator[av.AudioFrame]:
    for packet in container.demux(stream):
        yield from packet.decode()  # the final empty packet flushes the decoder


def _too_long(duration_s: float, options: AudioOptions) -> str:
    return f"audio lasts {duration_s:.1f} s, above the limit of {options.max_duration_s} s"
