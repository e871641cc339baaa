"""Which KV blocks each multimodal item covers, and block hashes that include the items' identities.

Prefix caching and KV-aware routing identify a block by a hash of its tokens chained on the previous block's
hash. Multimodal prompts break that: every image expands to the same run of placeholder tokens, so two prompts
with the same text and different images have identical token ids. Here each block's hash also mixes in the
sorted 64-bit hashes of the items whose placeholder tokens fall inside it (sorted, so the order in which the
items were listed does not matter). Consequences, which the tests pin down:

* same text, different image -> the blocks covering the image differ, and so does every later one (chaining);
* same image at the same position with the same text -> identical hashes, so the KV cache is shared;
* blocks before the first image keep their text-only hash, so a shared system prompt stays shared.

Only full blocks get a hash (a partial last block cannot be reused, as in vLLM and the seed's router);
:func:`multimodal_block_info` reports coverage for every block including a partial one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import blake3
import numpy as np

_BLOCK_CONTEXT: Final = "triptych 2026-11 kv block hash v1"
_U64_MAX: Final = (1 << 64) - 1
_U32_MAX: Final = (1 << 32) - 1


@dataclass(frozen=True, slots=True)
class MultimodalSpan:
    """One multimodal item in a prompt: its placeholder tokens ``[offset, offset + length)`` and its hash."""

    offset: int
    length: int
    mm_hash: int  # MediaHash.u64

    def __post_init__(self) -> None:
        if self.offset < 0 or self.length < 1:
            raise ValueError(f"span offset must be >= 0 and length >= 1, got {self.offset}+{self.length}")
        if not 0 <= self.mm_hash <= _U64_MAX:
            raise ValueError("mm_hash must be an unsigned 64-bit integer")

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True, slots=True)
class BlockInfo:
    """A full KV block: its token range, the sorted hashes of the items it covers, and its chained hash."""

    index: int
    start: int
    end: int  # exclusive
    mm_hashes: tuple[int, ...]
    block_hash: int  # 64-bit


def blocks_covered(span: MultimodalSpan, block_size: int) -> range:
    """Indices of the KV blocks holding at least one of ``span``'s tokens."""
    _check_block_size(block_size)
    return range(span.offset // block_size, (span.end - 1) // block_size + 1)


def multimodal_block_info(
    num_tokens: int, block_size: int, spans: Sequence[MultimodalSpan]
) -> tuple[tuple[int, ...], ...]:
    """For every block of a ``num_tokens`` prompt (the last may be partial), the sorted hashes of the items
    it covers (empty for text-only blocks). An item listed twice counts twice."""
    _check_block_size(block_size)
    if num_tokens < 0:
        raise ValueError("num_tokens must be >= 0")
    num_blocks = -(-num_tokens // block_size)
    per_block: list[list[int]] = [[] for _ in range(num_blocks)]
    for span in spans:
        if span.end > num_tokens:
            raise ValueError(
                f"span {span.offset}+{span.length} extends past the prompt's {num_tokens} tokens"
            )
        for block in blocks_covered(span, block_size):
            per_block[block].append(span.mm_hash)
    return tuple(tuple(sorted(hashes)) for hashes in per_block)


def block_hashes(
    token_ids: Sequence[int],
    block_size: int,
    spans: Sequence[MultimodalSpan] = (),
    *,
    parent_hash: int | None = None,
) -> tuple[BlockInfo, ...]:
    """Chained hashes of the full blocks of ``token_ids``, each mixing in its items' sorted hashes.

    ``hash_i = BLAKE3_kdf(parent, tokens_i, sorted mm hashes_i)[:8]`` with ``parent`` the previous block's
    hash, or ``parent_hash`` (e.g. a model/adapter namespace) for the first block. Tokens must be < 2**32.
    """
    infos = multimodal_block_info(len(token_ids), block_size, spans)
    tokens = np.asarray(token_ids, dtype=np.int64)
    if tokens.size and (tokens.min() < 0 or tokens.max() > _U32_MAX):
        raise ValueError("token ids must be in [0, 2**32)")
    encoded = tokens.astype("<u4")
    result: list[BlockInfo] = []
    parent = parent_hash
    for index in range(len(token_ids) // block_size):
        start, end = index * block_size, (index + 1) * block_size
        digest = _block_digest(parent, encoded[start:end].tobytes(), infos[index])
        result.append(BlockInfo(index, start, end, infos[index], digest))
        parent = digest
    return tuple(result)


def _block_digest(parent: int | None, token_bytes: bytes, mm_hashes: tuple[int, ...]) -> int:
    # Every field has a fixed width or a length prefix, so no two different inputs share an encoding.
    hasher = blake3.blake3(derive_key_context=_BLOCK_CONTEXT)
    if parent is None:
        hasher.update(b"\x00" + bytes(8))
    else:
        if not 0 <= parent <= _U64_MAX:
            raise ValueError("parent_hash must be an unsigned 64-bit integer")
        hasher.update(b"\x01" + parent.to_bytes(8, "big"))
    hasher.update(len(token_bytes).to_bytes(4, "big"))
    hasher.update(token_bytes)
    hasher.update(len(mm_hashes).to_bytes(4, "big"))
    for mm_hash in mm_hashes:
        hasher.update(mm_hash.to_bytes(8, "big"))
    return int.from_bytes(hasher.digest(length=8), "big")


def _check_block_size(block_size: int) -> None:
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
