"""A request's media parts, loaded: fetched (``MediaConnector``), hashed, decoded off the event loop --
or, for images under ``serving.decodeImagesOn: encode`` (the default), only probed.

The hash is BLAKE3 over the bytes as fetched (or the client's uuid), taken before decoding, so the encode
pool's cache keys do not depend on how a decoder behaves. A probed image is refused here for everything its
header shows (format, pixel limit) and travels as fetched, with the shape decoding will give; the worker
that encodes it decodes it only on an encoder-cache miss. The connector and the decode thread pool belong
to the app's lifespan (``app.py``), not to this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from triptych_contract import Modality

from triptych_workers.engines.errors import UnsupportedModalityError
from triptych_workers.engines.media import MediaItem
from triptych_workers.hashing import hash_media
from triptych_workers.media.audio import AudioOptions, decode_audio_async
from triptych_workers.media.connector import MediaConnector
from triptych_workers.media.image import decode_image_async, probe_image
from triptych_workers.media.video import decode_video_async
from triptych_workers.protocol import AudioURLPart, ImageURLPart, InputAudioPart, MediaPart, VideoURLPart
from triptych_workers.roles.common import gather_or_cancel

AUDIO_SAMPLE_RATE = 16_000


def part_source(part: MediaPart) -> tuple[Modality, str]:
    """The part's modality and the URL to fetch it from (inline audio becomes a data URL)."""
    if isinstance(part, ImageURLPart):
        return "image", part.image_url.url
    if isinstance(part, VideoURLPart):
        return "video", part.video_url.url
    if isinstance(part, AudioURLPart):
        return "audio", part.audio_url.url
    assert isinstance(part, InputAudioPart)
    return "audio", part.input_audio.to_data_url()


@dataclass
class MediaLoader:
    """Fetch (connector) -> hash -> decode (thread pool); both owned by the app's lifespan."""

    connector: MediaConnector
    executor: ThreadPoolExecutor
    modalities: frozenset[str]
    decode_images: bool = False  # False: probe images, leave decoding to the encode stage

    async def load(self, parts: Sequence[MediaPart]) -> list[MediaItem]:
        return await gather_or_cancel([self._load_one(p, f"media[{i}]") for i, p in enumerate(parts)])

    async def _load_one(self, part: MediaPart, where: str) -> MediaItem:
        modality, url = part_source(part)
        if modality not in self.modalities:
            raise UnsupportedModalityError(f"this deployment does not serve {modality} input", param=where)
        fetched = await self.connector.fetch(url, modality=modality)
        media_hash = hash_media(fetched.data, uuid=part.uuid).hex
        if modality == "image" and not self.decode_images:
            height, width = probe_image(fetched.data)
            data = np.frombuffer(fetched.data, dtype=np.uint8)
            return MediaItem("image", media_hash, data, compressed_shape=(height, width, 3))
        if modality == "image":
            image = await decode_image_async(fetched.data, executor=self.executor)
            return MediaItem("image", media_hash, np.asarray(image, dtype=np.uint8))
        if modality == "video":
            video = await decode_video_async(fetched.data, executor=self.executor)
            return MediaItem("video", media_hash, video.frames)
        audio = await decode_audio_async(
            fetched.data, AudioOptions(sample_rate=AUDIO_SAMPLE_RATE), executor=self.executor
        )
        return MediaItem("audio", media_hash, audio.samples, audio.sample_rate)
