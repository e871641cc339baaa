"""The identity of a piece of media: BLAKE3 over the bytes exactly as the client sent them.

Hashing the original bytes (not decoded pixels) is what the seed's TensorRT-LLM path does: it needs no decode,
so the frontend can hash, route and look the encoder cache up before any CPU is spent on pixels. Two encodings
of the same picture are two identities; that costs an occasional cache miss, never a wrong hit.

Two forms travel: the 64-character hex digest (cache keys, logs) and a 64-bit integer, the first 16 hex digits
read big-endian (KV block hashes and routers that want a machine word), exactly as the seed computes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import blake3

# BLAKE3's key-derivation mode gives a uuid its own hash domain: no uuid can collide with content bytes.
_UUID_CONTEXT: Final = "triptych 2026-11 media uuid v1"
# Above this size BLAKE3's multithreaded tree hashing pays for its thread hand-off.
_PARALLEL_THRESHOLD: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class MediaHash:
    """A media identity: ``hex`` is the 64-hex-digit BLAKE3 digest; ``source`` says what was hashed."""

    hex: str
    source: Literal["content", "uuid"] = "content"

    @property
    def u64(self) -> int:
        """The 64-bit form: the first 16 hex digits read big-endian."""
        return int(self.hex[:16], 16)


def hash_media(data: bytes | bytearray | memoryview, *, uuid: str | None = None) -> MediaHash:
    """The identity of ``data``: BLAKE3 of the original bytes, or of ``uuid`` when the client supplied one.

    A uuid lets a client name media it sends again (or sends as a different encoding) so the encoder cache
    hits; its hash is derived in a separate BLAKE3 domain, so uuids and contents never collide.
    """
    if uuid is not None:
        return hash_uuid(uuid)
    threads = blake3.blake3.AUTO if len(data) >= _PARALLEL_THRESHOLD else 1
    return MediaHash(blake3.blake3(data, max_threads=threads).hexdigest(), "content")


def hash_uuid(uuid: str) -> MediaHash:
    """The identity a client-supplied uuid stands for (BLAKE3 key-derivation mode over its UTF-8 bytes)."""
    if not uuid:
        raise ValueError("a media uuid must not be empty")
    digest = blake3.blake3(uuid.encode("utf-8"), derive_key_context=_UUID_CONTEXT).hexdigest()
    return MediaHash(digest, "uuid")
