"""Video decoding on real PyAV-encoded files whose frames carry their own index as a barcode."""

from __future__ import annotations

import asyncio
import io
import threading
from functools import cache

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from triptych_workers.media.errors import (
    MediaDecodeError,
    MediaError,
    MediaLimitExceeded,
    UnsupportedMediaFormat,
)
from triptych_workers.media.video import (
    VideoOptions,
    decode_video,
    decode_video_async,
    fps_frame_indices,
    sniff_video_container,
    uniform_frame_indices,
)

from tests.media_factory import (
    barcode_frame,
    encode_audio,
    encode_image,
    encode_video,
    gradient_array,
    indexed_video,
    noise_array,
    read_barcode,
    sine,
)
from tests.mutations import mutated
from tests.offloop import HandshakeExecutor

CODECS = [
    ("mp4", "libx264"),
    ("mp4", "mpeg4"),
    ("webm", "libvpx"),
    ("webm", "libvpx-vp9"),
    ("matroska", "libx264"),
]


@cache
def video(num_frames: int = 100, container: str = "mp4", codec: str = "libx264", fps: int = 25) -> bytes:
    return indexed_video(num_frames, container=container, codec=codec, fps=fps)


# ------------------------------------------------------------------------------------------ sampling (pure)


def test_uniform_sampling_matches_the_seed() -> None:
    assert uniform_frame_indices(100, 8) == (0, 14, 28, 42, 56, 70, 84, 99)
    assert uniform_frame_indices(5, 8) == (0, 1, 2, 3, 4)  # fewer frames than asked: all of them
    assert uniform_frame_indices(8, 8) == tuple(range(8))
    assert uniform_frame_indices(1, 8) == (0,)
    assert uniform_frame_indices(0, 8) == ()
    assert uniform_frame_indices(100, 1) == (0,)


@given(st.integers(1, 100_000), st.integers(1, 512))
def test_uniform_sampling_properties(total: int, n: int) -> None:
    picked = uniform_frame_indices(total, n)
    assert len(picked) == min(total, n)
    assert list(picked) == sorted(set(picked))
    assert picked[0] == 0
    assert picked[-1] == (total - 1 if n > 1 or total == 1 else 0)  # linspace(0, t-1, 1) is [0]
    expected = list(dict.fromkeys(int(i) for i in np.linspace(0, total - 1, n).astype(int)))
    assert list(picked) == (expected if total >= n else list(range(total)))


def test_fps_sampling_picks_the_first_frame_at_or_after_each_tick() -> None:
    times = [i / 25 for i in range(100)]  # 4 s at 25 fps
    assert fps_frame_indices(times, 2) == (0, 13, 25, 38, 50, 63, 75, 88)
    assert fps_frame_indices(times, 1) == (0, 25, 50, 75)
    assert fps_frame_indices(times, 100) == tuple(range(100))  # faster than the source: every frame once
    # Variable frame rate: a gap in the timestamps is skipped, not filled with repeats.
    assert fps_frame_indices([0.0, 0.1, 0.2, 2.0, 2.1], 2) == (0, 3)
    assert fps_frame_indices([], 2) == ()


# ------------------------------------------------------------------------------------------ real files


@pytest.mark.parametrize(("container", "codec"), CODECS)
def test_uniform_sampling_returns_the_seeds_frames(container: str, codec: str) -> None:
    decoded = decode_video(video(100, container, codec), VideoOptions(num_frames=8))
    assert decoded.frames.dtype == np.uint8
    assert decoded.frames.shape == (8, 48, 64, 3)
    assert decoded.indices == (0, 14, 28, 42, 56, 70, 84, 99)
    assert [read_barcode(frame) for frame in decoded.frames] == list(decoded.indices)
    assert decoded.total_frames == 100
    assert decoded.duration_s == pytest.approx(4.0, abs=0.05)
    assert decoded.timestamps_s[1] == pytest.approx(14 / 25, abs=0.005)


@pytest.mark.parametrize(("container", "codec"), CODECS[:3])
def test_short_video_yields_every_frame(container: str, codec: str) -> None:
    decoded = decode_video(video(5, container, codec), VideoOptions(num_frames=8))
    assert decoded.indices == (0, 1, 2, 3, 4)
    assert [read_barcode(frame) for frame in decoded.frames] == [0, 1, 2, 3, 4]


def test_default_sampling_is_32_frames() -> None:
    decoded = decode_video(video(100))
    assert decoded.indices == uniform_frame_indices(100, 32)
    assert [read_barcode(frame) for frame in decoded.frames] == list(decoded.indices)


@pytest.mark.parametrize(("container", "codec"), CODECS[::2])
def test_fps_sampling_follows_timestamps(container: str, codec: str) -> None:
    decoded = decode_video(video(100, container, codec), VideoOptions(fps=2))
    assert decoded.indices == (0, 13, 25, 38, 50, 63, 75, 88)
    assert [read_barcode(frame) for frame in decoded.frames] == list(decoded.indices)
    assert decoded.timestamps_s == pytest.approx([i / 25 for i in decoded.indices], abs=0.005)


def test_resize_scales_every_frame_and_keeps_content() -> None:
    decoded = decode_video(video(100), VideoOptions(num_frames=8, resize=(32, 24)))
    assert decoded.frames.shape == (8, 24, 32, 3)
    assert [read_barcode(frame) for frame in decoded.frames] == list(decoded.indices)


def test_a_30_fps_source_with_b_frames_keeps_presentation_order() -> None:
    # libx264's default GOP has B-frames: decode order differs from presentation order.
    data = indexed_video(60, fps=30, width=96, height=64)
    decoded = decode_video(data, VideoOptions(num_frames=60))
    assert [read_barcode(frame) for frame in decoded.frames] == list(range(60))


# ------------------------------------------------------------------------------------------ caps


def test_resolution_cap_from_the_header() -> None:
    with pytest.raises(MediaLimitExceeded, match="64x48"):
        decode_video(video(10), VideoOptions(num_frames=4, max_width=32))
    with pytest.raises(MediaLimitExceeded):
        decode_video(video(10), VideoOptions(num_frames=4, max_height=40))


def test_duration_cap() -> None:
    assert decode_video(video(100), VideoOptions(num_frames=4, max_duration_s=4.1)).total_frames == 100
    with pytest.raises(MediaLimitExceeded, match=r"lasts 4\.0 s"):
        decode_video(video(100), VideoOptions(num_frames=4, max_duration_s=3.0))


def test_source_frame_cap_stops_demuxing() -> None:
    with pytest.raises(MediaLimitExceeded, match="more than 50 frames"):
        decode_video(video(100), VideoOptions(num_frames=4, max_source_frames=50))


def test_fps_sampling_beyond_max_frames_is_refused() -> None:
    with pytest.raises(MediaLimitExceeded, match="100 frames"):
        decode_video(video(100), VideoOptions(fps=25, max_frames=50))


def test_options_validate() -> None:
    with pytest.raises(ValueError, match="not both"):
        VideoOptions(num_frames=8, fps=2)
    with pytest.raises(ValueError, match="max_frames"):
        VideoOptions(num_frames=300)
    with pytest.raises(ValueError, match="resize"):
        VideoOptions(resize=(8000, 100))
    assert VideoOptions(fps=1).uniform_frames is None
    assert VideoOptions().uniform_frames == 32


# ------------------------------------------------------------------------------------------ refusals


def avi_video() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="avi") as out:
        stream = out.add_stream("mpeg4", rate=25)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(3):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(barcode_frame(i, 32, 32), format="rgb24")))
        out.mux(stream.encode(None))
    return buf.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"#EXTM3U\n#EXT-X-TARGETDURATION:1\nfile:///etc/passwd\n", id="hls-playlist"),
        pytest.param(b"ffconcat version 1.0\nfile /etc/passwd\n", id="ffconcat"),
        pytest.param(encode_image(gradient_array(32, 32), "GIF"), id="gif"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00" * 100, id="zeros"),
    ],
)
def test_non_video_containers_are_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaFormat):
        decode_video(data)


def test_avi_is_not_on_the_container_allowlist() -> None:
    data = avi_video()
    assert sniff_video_container(data) is None
    with pytest.raises(UnsupportedMediaFormat):
        decode_video(data)


def test_codec_outside_the_allowlist_is_refused() -> None:
    frames = [barcode_frame(i, 32, 32) for i in range(3)]
    data = encode_video(frames, container="matroska", codec="ffv1")
    with pytest.raises(UnsupportedMediaFormat, match="ffv1"):
        decode_video(data)


def test_audio_only_file_has_no_video_stream() -> None:
    data = encode_audio(sine(440, 0.3, 48_000), 48_000, container="webm", codec="libopus")
    with pytest.raises(MediaDecodeError, match="no video stream"):
        decode_video(data)


@pytest.mark.parametrize(("container", "codec"), CODECS)
@pytest.mark.parametrize("keep", [0.05, 0.3, 0.5, 0.7])
def test_truncated_videos_are_decode_errors(container: str, codec: str, keep: float) -> None:
    data = video(100, container, codec)
    with pytest.raises(MediaDecodeError):
        decode_video(data[: int(len(data) * keep)], VideoOptions(num_frames=8))


@pytest.mark.parametrize(("container", "codec"), CODECS[::2])
def test_corrupt_headers_are_decode_errors(container: str, codec: str) -> None:
    data = video(20, container, codec)
    # Keep the magic bytes, destroy everything the demuxer needs after them.
    with pytest.raises(MediaDecodeError):
        decode_video(data[:12] + bytes(len(data) - 12))


# ------------------------------------------------------------------------------------------ off the loop


async def test_async_decode_leaves_the_event_loop_free() -> None:
    frames = [noise_array(320, 240, seed=i) for i in range(30)]
    data = encode_video(frames, container="mp4", codec="libx264", options={"crf": "10"})
    with HandshakeExecutor(asyncio.get_running_loop()) as executor:
        decoded = await decode_video_async(data, VideoOptions(num_frames=30), executor=executor)
        assert executor.jobs == 1
        assert threading.get_ident() not in executor.job_threads
    assert decoded.frames.shape == (30, 240, 320, 3)


# ------------------------------------------------------------------------------------------ property-based


@cache
def samples() -> list[bytes]:
    return [
        indexed_video(6, width=32, height=32, container="mp4", codec="libx264"),
        indexed_video(6, width=32, height=32, container="mp4", codec="mpeg4"),
        indexed_video(6, width=32, height=32, container="webm", codec="libvpx"),
        indexed_video(6, width=32, height=32, container="webm", codec="libvpx-vp9"),
    ]


@pytest.mark.timeout(240)
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=512),
        st.builds(
            lambda p, b: p + b,
            st.sampled_from([b"\x00\x00\x00\x18ftypisom", b"\x1a\x45\xdf\xa3"]),
            st.binary(),
        ),
        mutated(samples),
        mutated(samples),  # listed twice: mutations of real files reach deepest
    )
)
def test_random_and_mutated_bytes_only_raise_media_errors(data: bytes) -> None:
    try:
        decoded = decode_video(data, VideoOptions(num_frames=4, max_source_frames=1_000, max_duration_s=60))
    except MediaError as exc:
        event(type(exc).__name__)  # --hypothesis-show-statistics shows how deep the inputs got
        return
    event("decoded")
    assert decoded.frames.dtype == np.uint8
    assert decoded.frames.ndim == 4
    assert 1 <= len(decoded.frames) <= 4
