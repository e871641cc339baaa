"""Video decoding with PyAV: fetched bytes -> N sampled RGB frames as one ``uint8`` array ``(T, H, W, 3)``.

How a video is read, and why:

* The container is decided by magic bytes (MP4/MOV ``ftyp``, Matroska/WebM EBML) and that demuxer is forced:
  FFmpeg's probing would otherwise accept dozens of formats, some of which (HLS playlists, concat lists)
  open further URLs or files on their own. The codec must be one of a short list of common video codecs.
* Caps are checked as early as the information exists: resolution and duration from the header, then the
  packet count and duration again while demuxing (packets are cheap to read, frames are not), then the size
  of every decoded frame.
* Sampling is decided *before* decoding, from the demuxed packets: ``num_frames`` samples uniformly
  exactly like the seed (``linspace(0, total-1, n)`` truncated and de-duplicated, every frame when the video
  has fewer), ``fps`` picks the first frame at or after each ``1/fps`` tick of the presentation timestamps.
  Decoding then runs once and converts only the chosen frames to RGB (the conversion costs memory and time).

Blocking CPU work: on the event loop use :func:`decode_video_async` with the application's executor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from typing import Final, Self

import av
import av.error
import numpy as np
import numpy.typing as npt
from av.container import InputContainer
from av.packet import Packet
from pydantic import BaseModel, ConfigDict, Field, model_validator

from triptych_workers.media.errors import MediaDecodeError, MediaLimitExceeded, UnsupportedMediaFormat
from triptych_workers.media.pyav import allowed_codec, decode_container

#: Decoders we run on untrusted input: the codecs real clients send. Names are FFmpeg decoder names.
ALLOWED_VIDEO_CODECS: Final = frozenset(
    {"h264", "hevc", "vp8", "vp9", "av1", "libdav1d", "libaom-av1", "mpeg4", "libvpx", "libvpx-vp9"}
)

#: Uniform sampling's frame count when the caller names neither a count nor a rate (Dynamo's newer default).
DEFAULT_NUM_FRAMES: Final = 32

# What PyAV raises on truncated or corrupt input. Not ``Exception``: bugs of ours must reach the 500 handler.


class VideoOptions(BaseModel):
    """How to sample a video and what it may be. Exactly one of ``num_frames`` / ``fps`` is used."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_frames: int | None = Field(
        default=None,
        ge=1,
        description=f"Frames sampled uniformly over the whole video; {DEFAULT_NUM_FRAMES} when neither this "
        "nor fps is set.",
    )
    fps: float | None = Field(
        default=None, gt=0, le=240, description="Sample this many frames per second instead of num_frames."
    )
    resize: tuple[int, int] | None = Field(
        default=None, description="(width, height) of the returned frames; None keeps the source size."
    )
    max_frames: int = Field(default=256, ge=1, description="Most frames returned (sampled).")
    max_source_frames: int = Field(
        default=36_000, ge=1, description="Most frames in the source (every one must be decoded)."
    )
    max_duration_s: float = Field(default=600.0, gt=0)
    max_width: int = Field(default=4096, ge=1)
    max_height: int = Field(default=4096, ge=1)
    decoder_threads: int = Field(
        default=0,
        ge=0,
        le=64,
        description="FFmpeg decoder threads per video; 0 lets FFmpeg choose. Concurrency across videos comes "
        "from the executor.",
    )

    @model_validator(mode="after")
    def _one_sampling_mode(self) -> Self:
        if self.num_frames is not None and self.fps is not None:
            raise ValueError("set num_frames or fps, not both")
        uniform = self.uniform_frames
        if uniform is not None and uniform > self.max_frames:
            raise ValueError(f"num_frames={uniform} exceeds max_frames={self.max_frames}")
        if self.resize is not None and (
            not 1 <= self.resize[0] <= self.max_width or not 1 <= self.resize[1] <= self.max_height
        ):
            raise ValueError(f"resize={self.resize} must be within 1..max_width x 1..max_height")
        return self

    @property
    def uniform_frames(self) -> int | None:
        """How many frames uniform sampling takes, or None when sampling by ``fps``."""
        if self.fps is not None:
            return None
        return self.num_frames if self.num_frames is not None else DEFAULT_NUM_FRAMES


@dataclass(frozen=True, slots=True)
class DecodedVideo:
    """Sampled frames and where they came from."""

    frames: npt.NDArray[np.uint8]  # (T, H, W, 3) RGB
    indices: tuple[int, ...]  # index of each returned frame in the source, presentation order
    timestamps_s: tuple[float, ...]  # presentation time of each returned frame
    total_frames: int
    duration_s: float
    container: str  # "mp4" or "matroska"
    codec: str


def sniff_video_container(data: bytes) -> str | None:
    """The demuxer for ``data`` by magic bytes: ``"mp4"`` (ISO BMFF / QuickTime), ``"matroska"`` or None."""
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return "mp4"
    if data.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    return None


def uniform_frame_indices(total: int, num_frames: int) -> tuple[int, ...]:
    """The seed's uniform sampling: ``linspace(0, total-1, n)`` truncated and de-duplicated; all when fewer.

    >>> uniform_frame_indices(100, 8)
    (0, 14, 28, 42, 56, 70, 84, 99)
    """
    if total <= 0 or num_frames <= 0:
        return ()
    if total < num_frames:
        return tuple(range(total))
    picked = np.linspace(0, total - 1, num_frames).astype(np.int64)
    return tuple(int(i) for i in dict.fromkeys(picked.tolist()))


def fps_frame_indices(frame_times_s: Sequence[float], fps: float) -> tuple[int, ...]:
    """For each tick ``t0 + k/fps`` up to the last frame, the first frame shown at or after it, de-duplicated.

    ``frame_times_s`` are presentation times in presentation order (non-decreasing).
    """
    if not frame_times_s or fps <= 0:
        return ()
    start, last = frame_times_s[0], frame_times_s[-1]
    # A tick that lands within a microsecond of a frame counts as on it (timestamps are rounded fractions).
    eps = 1e-6
    picked: list[int] = []
    cursor = 0
    k = 0
    while True:
        tick = start + k / fps
        if tick > last + eps:
            break
        while cursor < len(frame_times_s) and frame_times_s[cursor] < tick - eps:
            cursor += 1
        if cursor == len(frame_times_s):
            break
        if not picked or picked[-1] != cursor:
            picked.append(cursor)
        k += 1
    return tuple(picked)


def decode_video(data: bytes, options: VideoOptions | None = None) -> DecodedVideo:
    """Decode and sample ``data``; see the module docstring for the order of checks.

    Raises :class:`UnsupportedMediaFormat` (container or codec not allowed), :class:`MediaLimitExceeded`
    (resolution, duration, source or sampled frame count) or :class:`MediaDecodeError` (truncated/corrupt).
    """
    options = options or VideoOptions()
    container_name = sniff_video_container(data)
    if container_name is None:
        raise UnsupportedMediaFormat("video bytes are not MP4/MOV or WebM/Matroska")
    return decode_container(
        data,
        container_name,
        "video",
        partial(_decode_open_container, container_name=container_name, options=options),
    )


async def decode_video_async(
    data: bytes, options: VideoOptions | None = None, *, executor: Executor
) -> DecodedVideo:
    """:func:`decode_video` on the caller's ``executor`` (owned by the app's lifespan, not by this module)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, partial(decode_video, data, options))


def _decode_open_container(
    container: InputContainer, container_name: str, options: VideoOptions
) -> DecodedVideo:
    if not container.streams.video:
        raise MediaDecodeError(f"{container_name} file has no video stream")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    codec = allowed_codec(ctx, "video", ALLOWED_VIDEO_CODECS)
    _check_resolution(int(ctx.width), int(ctx.height), options, "header")
    declared_s = _declared_duration(container, stream)
    if declared_s is not None:
        _check_duration(declared_s, options)

    packets = _demux(container, stream, options)
    if not packets:
        raise MediaDecodeError(f"{container_name} file has no video frames")
    time_base = float(stream.time_base) if stream.time_base is not None else 0.0
    frame_times = _presentation_times(packets, time_base, stream.average_rate)
    duration_s = _source_duration(packets, frame_times, time_base)
    _check_duration(duration_s, options)
    if declared_s is not None and duration_s < declared_s - max(0.5, 0.1 * declared_s):
        # Matroska/WebM are streamable: a cut file demuxes cleanly up to the cut. The header, written when
        # the file was finished, still says how long it was. The slack allows for a container duration that
        # includes a slightly longer audio track.
        raise MediaDecodeError(
            f"{container_name} video is truncated: the header says {declared_s:.2f} s, "
            f"the stream holds {duration_s:.2f} s"
        )

    uniform = options.uniform_frames
    if uniform is not None:
        indices = uniform_frame_indices(len(packets), uniform)
    else:
        assert options.fps is not None  # VideoOptions: one of the two modes is always set
        indices = fps_frame_indices(frame_times, options.fps)
    if len(indices) > options.max_frames:
        raise MediaLimitExceeded(
            f"sampling at {options.fps} fps yields {len(indices)} frames, above {options.max_frames}"
        )

    ctx.thread_type = "AUTO"
    ctx.thread_count = options.decoder_threads
    frames, kept, times = _decode_selected(stream, packets, indices, frame_times, options)
    if not frames:
        raise MediaDecodeError(f"no frame of the {container_name} video could be decoded")
    return DecodedVideo(
        frames=np.stack(frames),
        indices=tuple(kept),
        timestamps_s=tuple(times),
        total_frames=len(packets),
        duration_s=duration_s,
        container=container_name,
        codec=codec,
    )


def _demux(
    container: InputContainer, stream: av.VideoStream, options: VideoOptions
) -> list[Packet[av.VideoStream]]:
    """Every packet of ``stream``. Cheap next to decoding, and it gives the frame count sampling needs."""
    packets = []
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's end-of-stream marker
            continue
        packets.append(packet)
        if len(packets) > options.max_source_frames:
            raise MediaLimitExceeded(f"video has more than {options.max_source_frames} frames")
    return packets


def _decode_selected(
    stream: av.VideoStream,
    packets: list[Packet[av.VideoStream]],
    indices: tuple[int, ...],
    frame_times: list[float],
    options: VideoOptions,
) -> tuple[list[npt.NDArray[np.uint8]], list[int], list[float]]:
    """Decode once; convert to RGB only the frames at ``indices`` (presentation order)."""
    wanted = set(indices)
    size = options.resize
    frames: list[npt.NDArray[np.uint8]] = []
    kept: list[int] = []
    times: list[float] = []
    for position, frame in enumerate(_decoded_frames(stream, packets)):
        _check_resolution(frame.width, frame.height, options, "frame")
        if position in wanted:
            if size is None:  # later frames are scaled to the first kept one's size if the stream changes
                size = (frame.width, frame.height)
            rgb = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
            frames.append(rgb.astype(np.uint8, copy=False))  # rgb24 is uint8 already: no copy
            kept.append(position)
            times.append(
                frame.time if frame.time is not None else frame_times[min(position, len(frame_times) - 1)]
            )
        if position >= indices[-1]:
            break  # nothing after the last sampled frame is needed
    return frames, kept, times


def _decoded_frames(stream: av.VideoStream, packets: list[Packet[av.VideoStream]]) -> Iterator[av.VideoFrame]:
    for packet in packets:
        yield from stream.decode(packet)
    yield from stream.decode(None)  # flush the frames the decoder still holds (B-frames, threading)


def _declared_duration(container: InputContainer, stream: av.VideoStream) -> float | None:
    """The video's duration as its header states it (the stream's own if given, else the container's)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _presentation_times(
    packets: list[Packet[av.VideoStream]], time_base: float, average_rate: Fraction | None
) -> list[float]:
    """Frame times in presentation order from the packets' pts; evenly spaced when the container has none."""
    pts = [p.pts for p in packets if p.pts is not None]
    if time_base > 0 and len(pts) == len(packets):
        return sorted(p * time_base for p in pts)
    rate = float(average_rate) if average_rate else 25.0
    return [i / rate for i in range(len(packets))]


def _source_duration(
    packets: list[Packet[av.VideoStream]], frame_times: list[float], time_base: float
) -> float:
    span = frame_times[-1] - frame_times[0]
    last = max(packets, key=lambda p: p.pts if p.pts is not None else -1)
    frame_len = float(last.duration) * time_base if last.duration and time_base > 0 else 0.0
    return max(span + frame_len, 0.0)


def _check_resolution(width: int, height: int, options: VideoOptions, where: str) -> None:
    if width > options.max_width or height > options.max_height:
        raise MediaLimitExceeded(
            f"video {where} resolution {width}x{height} exceeds {options.max_width}x{options.max_height}"
        )


def _check_duration(duration_s: float, options: VideoOptions) -> None:
    if duration_s > options.max_duration_s:
        raise MediaLimitExceeded(
            f"video lasts {duration_s:.1f} s, above the limit of {options.max_duration_s} s"
        )
