"""Audio decoding on real PyAV-encoded files: sine tones whose frequency is measured after resampling."""

from __future__ import annotations

import asyncio
import threading
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from triptych_workers.media.audio import (
    AudioOptions,
    decode_audio,
    decode_audio_async,
    riff_shortfall,
    sniff_audio_container,
)
from triptych_workers.media.errors import (
    MediaDecodeError,
    MediaError,
    MediaLimitExceeded,
    UnsupportedMediaFormat,
)

from tests.media_factory import (
    dominant_frequency,
    encode_audio,
    encode_image,
    gradient_array,
    indexed_video,
    sine,
)
from tests.mutations import mutated
from tests.offloop import HandshakeExecutor

# (container, codec, source rate): every container the decoder accepts, with an encoder this FFmpeg has.
FORMATS = [
    ("wav", "pcm_s16le", 44_100),
    ("wav", "pcm_f32le", 22_050),
    ("flac", "flac", 48_000),
    ("ogg", "libopus", 48_000),
    ("mp3", "libmp3lame", 44_100),
]


@cache
def tone(
    container: str, codec: str, rate: int, *, seconds: float = 1.0, freq: float = 440.0, channels: int = 2
) -> bytes:
    return encode_audio(sine(freq, seconds, rate), rate, container=container, codec=codec, channels=channels)


@pytest.mark.parametrize(("container", "codec", "rate"), FORMATS)
def test_tone_survives_decode_downmix_and_resampling(container: str, codec: str, rate: int) -> None:
    decoded = decode_audio(tone(container, codec, rate, freq=440.0))
    assert decoded.sample_rate == 16_000
    assert decoded.samples.dtype == np.float32
    assert decoded.samples.ndim == 1
    assert decoded.source_sample_rate == rate
    assert decoded.source_channels == 2
    # Lossy codecs add priming/padding samples: about a frame either way.
    assert decoded.duration_s == pytest.approx(1.0, abs=0.08)
    assert dominant_frequency(decoded.samples, 16_000) == pytest.approx(440.0, abs=2.0)
    assert np.abs(decoded.samples).max() <= 1.0


@pytest.mark.parametrize("target", [8_000, 16_000, 24_000])
def test_resampling_to_other_rates_keeps_pitch(target: int) -> None:
    decoded = decode_audio(
        tone("flac", "flac", 44_100, freq=1_000.0, channels=1), AudioOptions(sample_rate=target)
    )
    assert decoded.sample_rate == target
    assert len(decoded.samples) == pytest.approx(target, abs=target * 0.01)
    assert dominant_frequency(decoded.samples, target) == pytest.approx(1_000.0, abs=3.0)


def test_frequencies_above_the_target_nyquist_are_filtered_not_aliased() -> None:
    # 7 kHz at 16 kHz is fine; 9 kHz would alias to 7 kHz if the resampler did not low-pass first.
    decoded = decode_audio(tone("wav", "pcm_s16le", 44_100, freq=9_000.0, channels=1))
    assert np.sqrt(np.mean(decoded.samples**2)) < 0.05


def test_duration_cap_from_header_and_from_samples() -> None:
    data = tone("wav", "pcm_s16le", 16_000, seconds=3.0, channels=1)
    assert decode_audio(data, AudioOptions(max_duration_s=3.1)).duration_s == pytest.approx(3.0, abs=0.01)
    with pytest.raises(MediaLimitExceeded, match=r"3\.0 s"):
        decode_audio(data, AudioOptions(max_duration_s=2.0))


def test_sniffing() -> None:
    assert sniff_audio_container(tone("wav", "pcm_s16le", 16_000)) == "wav"
    assert sniff_audio_container(tone("flac", "flac", 48_000)) == "flac"
    assert sniff_audio_container(tone("ogg", "libopus", 48_000)) == "ogg"
    assert sniff_audio_container(tone("mp3", "libmp3lame", 44_100)) == "mp3"
    # An MP3 without an ID3 tag starts with a frame sync; ADTS AAC shares the sync but has layer 0.
    assert sniff_audio_container(b"\xff\xfb\x90\x00") == "mp3"
    assert sniff_audio_container(b"\xff\xf1\x50\x80") is None


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"#EXTM3U\nfile:///etc/passwd\n", id="hls"),
        pytest.param(encode_image(gradient_array(16, 16), "PNG"), id="png"),
        pytest.param(b"\xff\xf1\x50\x80" + bytes(200), id="adts-aac"),
        pytest.param(b"RIFF\x00\x00\x00\x00AVI LIST", id="avi"),
    ],
)
def test_other_formats_are_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaFormat):
        decode_audio(data)


def test_video_container_is_not_audio() -> None:
    with pytest.raises(UnsupportedMediaFormat):
        decode_audio(indexed_video(5))


def test_ogg_without_audio_is_a_decode_error() -> None:
    # An Ogg page whose stream is not one FFmpeg knows as audio.
    page = b"OggS\x00\x02" + bytes(8) + b"\x01\x00\x00\x00" + bytes(4) + bytes(4) + b"\x01\x08" + b"garbage!"
    with pytest.raises(MediaDecodeError):
        decode_audio(page)


@pytest.mark.parametrize(("container", "codec", "rate"), FORMATS)
@pytest.mark.parametrize("keep", [0.001, 0.005, 0.01])
def test_truncated_headers_are_decode_errors(container: str, codec: str, rate: int, keep: float) -> None:
    data = tone(container, codec, rate)
    with pytest.raises(MediaDecodeError):
        decode_audio(data[: max(int(len(data) * keep), 5)])


@pytest.mark.parametrize(("container", "codec", "rate"), [f for f in FORMATS if f[0] != "wav"])
def test_corrupt_payloads_are_decode_errors(container: str, codec: str, rate: int) -> None:
    data = tone(container, codec, rate)
    # Keep the magic bytes, zero everything else: no stream header, no frame survives.
    with pytest.raises(MediaDecodeError):
        decode_audio(data[:4] + bytes(len(data) - 4))


@pytest.mark.parametrize(("container", "codec", "rate"), [f for f in FORMATS if f[0] != "ogg"])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.85])
def test_files_cut_mid_stream_are_decode_errors(container: str, codec: str, rate: int, keep: float) -> None:
    # These containers decode cleanly up to a cut; their header's duration is what gives the cut away.
    data = tone(container, codec, rate, seconds=3.0)
    with pytest.raises(MediaDecodeError, match="truncated"):
        decode_audio(data[: int(len(data) * keep)])
    assert decode_audio(data).duration_s == pytest.approx(3.0, abs=0.08)  # the whole file is fine


def test_ogg_cut_mid_stream_decodes_what_is_there() -> None:
    # Ogg states no total length up front (FFmpeg reads it from the last page present), so a cut Ogg file is
    # indistinguishable from a shorter one: it decodes, shorter, with the pitch intact.
    data = tone("ogg", "libopus", 48_000, seconds=3.0)
    decoded = decode_audio(data[: len(data) // 2])
    assert 0.5 < decoded.duration_s < 2.0
    assert dominant_frequency(decoded.samples, 16_000) == pytest.approx(440.0, abs=4.0)


def test_options_validate() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        AudioOptions(sample_rate=10)
    with pytest.raises(ValueError, match="max_duration_s"):
        AudioOptions(max_duration_s=0)


async def test_async_decode_leaves_the_event_loop_free() -> None:
    data = tone("mp3", "libmp3lame", 44_100, seconds=60.0, channels=2)
    with HandshakeExecutor(asyncio.get_running_loop()) as executor:
        decoded = await decode_audio_async(data, executor=executor)
        assert executor.jobs == 1
        assert threading.get_ident() not in executor.job_threads
    assert decoded.duration_s == pytest.approx(60.0, abs=0.1)


# ------------------------------------------------------------------------------------------ property-based


@cache
def samples() -> list[bytes]:
    return [
        tone("wav", "pcm_s16le", 8_000, seconds=0.05, channels=1),
        tone("flac", "flac", 8_000, seconds=0.1, channels=1),
        tone("ogg", "libopus", 48_000, seconds=0.1, channels=1),
        tone("mp3", "libmp3lame", 22_050, seconds=0.1, channels=1),
    ]


@pytest.mark.timeout(240)
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=512),
        st.builds(
            lambda p, b: p + b,
            st.sampled_from([b"RIFF\x24\x00\x00\x00WAVEfmt ", b"fLaC", b"OggS", b"ID3"]),
            st.binary(),
        ),
        mutated(samples),
        mutated(samples),  # listed twice: mutations of real files reach deepest
    )
)
def test_random_and_mutated_bytes_only_raise_media_errors(data: bytes) -> None:
    try:
        decoded = decode_audio(data, AudioOptions(max_duration_s=30))
    except MediaError as exc:
        event(type(exc).__name__)  # --hypothesis-show-statistics shows how deep the inputs got
        return
    event("decoded")
    assert decoded.samples.dtype == np.float32
    assert decoded.duration_s <= 30.0 + 1 / 16_000


def test_wav_from_a_streaming_writer_with_unknown_size_decodes() -> None:
    # Streaming writers put 0xFFFFFFFF (or 0) in the RIFF size: "unknown", not "truncated".
    data = bytearray(tone("wav", "pcm_s16le", 16_000, channels=1))
    data[4:8] = (0xFFFFFFFF).to_bytes(4, "little")
    assert riff_shortfall(bytes(data)) == 0
    assert decode_audio(bytes(data)).duration_s == pytest.approx(1.0, abs=0.01)
    assert riff_shortfall(tone("wav", "pcm_s16le", 16_000, channels=1)[:-100]) == 99
