"""Content identity: BLAKE3 media hashes and the per-block multimodal hashes that KV routing uses.

Pure functions and frozen dataclasses only; no I/O.
"""

from triptych_workers.hashing.blocks import (
    BlockInfo,
    MultimodalSpan,
    block_hashes,
    blocks_covered,
    multimodal_block_info,
)
from triptych_workers.hashing.media import MediaHash, hash_media, hash_uuid

__all__ = [
    "BlockInfo",
    "MediaHash",
    "MultimodalSpan",
    "block_hashes",
    "blocks_covered",
    "hash_media",
    "hash_uuid",
    "multimodal_block_info",
]
