"""Media identity (BLAKE3) and the per-block multimodal hashes of a prompt."""

from __future__ import annotations

import hashlib

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st
from triptych_workers.hashing import (
    BlockInfo,
    MediaHash,
    MultimodalSpan,
    block_hashes,
    blocks_covered,
    hash_media,
    hash_uuid,
    multimodal_block_info,
)

from tests.media_factory import encode_image, gradient_array

# ------------------------------------------------------------------------------------------ media hash


def test_media_hash_is_blake3_of_the_original_bytes() -> None:
    data = encode_image(gradient_array(32, 32), "PNG")
    digest = hash_media(data)
    assert digest.hex == blake3.blake3(data).hexdigest()
    assert len(digest.hex) == 64
    assert digest.source == "content"
    assert digest.hex != hashlib.sha256(data).hexdigest()


def test_known_vector_and_64_bit_form() -> None:
    # BLAKE3's published hash of the empty input; the 64-bit form is its first 16 hex digits, big-endian.
    digest = hash_media(b"")
    assert digest.hex == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    assert digest.u64 == 0xAF1349B9F5F9A1A6
    assert digest.u64 == int.from_bytes(bytes.fromhex(digest.hex)[:8], "big")


def test_large_inputs_hash_the_same_with_threads() -> None:
    data = bytes(range(256)) * 20_000  # 5 MB: above the multithreading threshold
    assert hash_media(data).hex == blake3.blake3(data).hexdigest()
    assert hash_media(memoryview(data)).hex == hash_media(bytearray(data)).hex


def test_different_encodings_of_the_same_picture_are_different_media() -> None:
    pixels = gradient_array(32, 32)
    assert hash_media(encode_image(pixels, "PNG")) != hash_media(encode_image(pixels, "WEBP", lossless=True))


def test_uuid_overrides_content_and_lives_in_its_own_domain() -> None:
    a, b = b"image-a", b"image-b"
    assert hash_media(a, uuid="u-1") == hash_media(b, uuid="u-1") == hash_uuid("u-1")
    assert hash_media(a, uuid="u-1").source == "uuid"
    assert hash_media(a, uuid="u-1") != hash_media(a, uuid="u-2")
    # A uuid whose text equals some content does not collide with that content's hash.
    assert hash_uuid("image-a").hex != hash_media(b"image-a").hex
    with pytest.raises(ValueError, match="empty"):
        hash_uuid("")


def test_media_hash_is_a_value() -> None:
    assert MediaHash("ab" * 32) == MediaHash("ab" * 32)
    assert len({MediaHash("ab" * 32), MediaHash("ab" * 32)}) == 1


# ------------------------------------------------------------------------------------------ blocks

BLOCK = 16
IMAGE_TOKEN = 151655  # an image placeholder id: every image expands to a run of these
A, B = hash_media(b"image A").u64, hash_media(b"image B").u64


def prompt(prefix: int, image_tokens: int, suffix: int) -> list[int]:
    """Text tokens, an image's placeholder run, more text; the same text for every image."""
    return list(range(1000, 1000 + prefix)) + [IMAGE_TOKEN] * image_tokens + list(range(2000, 2000 + suffix))


def test_blocks_covered() -> None:
    assert blocks_covered(MultimodalSpan(0, 16, A), 16) == range(0, 1)
    assert blocks_covered(MultimodalSpan(10, 10, A), 16) == range(0, 2)
    assert blocks_covered(MultimodalSpan(16, 1, A), 16) == range(1, 2)
    assert blocks_covered(MultimodalSpan(15, 34, A), 16) == range(0, 4)  # tokens 15..48


def test_multimodal_block_info_lists_sorted_hashes_per_block() -> None:
    low, high = sorted([A, B])
    spans = [MultimodalSpan(20, 20, high), MultimodalSpan(36, 8, low)]  # listed high first on purpose
    info = multimodal_block_info(50, BLOCK, spans)
    assert len(info) == 4  # 3 full blocks and a partial one
    assert info == ((), (high,), (low, high), ())
    with pytest.raises(ValueError, match="past the prompt"):
        multimodal_block_info(30, BLOCK, spans)


def test_only_full_blocks_get_hashes_and_they_chain() -> None:
    tokens = prompt(20, 30, 14)  # 64 tokens: 4 full blocks
    blocks = block_hashes(tokens, BLOCK, [MultimodalSpan(20, 30, A)])
    assert [b.index for b in blocks] == [0, 1, 2, 3]
    assert [(b.start, b.end) for b in blocks] == [(0, 16), (16, 32), (32, 48), (48, 64)]
    assert [b.mm_hashes for b in blocks] == [(), (A,), (A,), (A,)]
    assert len(block_hashes(tokens[:63], BLOCK, [MultimodalSpan(20, 30, A)])) == 3
    assert all(0 <= b.block_hash < 2**64 for b in blocks)
    # Chaining: the same block contents after a different prefix hash differently.
    shifted = block_hashes([7] * 16 + tokens[16:], BLOCK, [MultimodalSpan(20, 30, A)])
    assert shifted[0].block_hash != blocks[0].block_hash
    assert all(s.block_hash != b.block_hash for s, b in zip(shifted, blocks, strict=True))


def test_same_text_different_image_never_shares_a_block_after_the_image_starts() -> None:
    tokens = prompt(40, 50, 30)  # image in blocks 2..5
    with_a = block_hashes(tokens, BLOCK, [MultimodalSpan(40, 50, A)])
    with_b = block_hashes(tokens, BLOCK, [MultimodalSpan(40, 50, B)])
    first_image_block = 40 // BLOCK
    for a, b in zip(with_a, with_b, strict=True):
        if a.index < first_image_block:
            assert a.block_hash == b.block_hash  # the shared text prefix stays shared
        else:
            assert a.block_hash != b.block_hash


def test_same_image_at_the_same_position_always_shares() -> None:
    tokens = prompt(40, 50, 30)
    first = block_hashes(tokens, BLOCK, [MultimodalSpan(40, 50, A)])
    again = block_hashes(list(tokens), BLOCK, [MultimodalSpan(40, 50, A)])
    assert first == again
    # Listing order of the items does not matter (hashes are sorted per block).
    two = [MultimodalSpan(40, 20, A), MultimodalSpan(60, 20, B)]
    assert block_hashes(tokens, BLOCK, two) == block_hashes(tokens, BLOCK, two[::-1])


def test_swapping_two_images_changes_the_blocks_they_do_not_share() -> None:
    tokens = prompt(16, 32, 16)  # image 1 in block 1, image 2 in block 2
    ab = block_hashes(tokens, BLOCK, [MultimodalSpan(16, 16, A), MultimodalSpan(32, 16, B)])
    ba = block_hashes(tokens, BLOCK, [MultimodalSpan(16, 16, B), MultimodalSpan(32, 16, A)])
    assert ab[0] == ba[0]
    assert ab[1].block_hash != ba[1].block_hash
    assert ab[2].block_hash != ba[2].block_hash


def test_text_only_prompt_and_parent_namespace() -> None:
    tokens = list(range(48))
    plain = block_hashes(tokens, BLOCK)
    assert all(b.mm_hashes == () for b in plain)
    namespaced = block_hashes(tokens, BLOCK, parent_hash=12345)
    assert all(p.block_hash != n.block_hash for p, n in zip(plain, namespaced, strict=True))
    assert block_hashes(tokens, BLOCK, parent_hash=0)[0] != plain[0]  # "parent 0" is not "no parent"


def test_an_image_spanning_a_block_boundary_marks_both_blocks() -> None:
    tokens = prompt(10, 12, 10)  # tokens 10..21: blocks 0 and 1
    with_a = block_hashes(tokens, BLOCK, [MultimodalSpan(10, 12, A)])
    with_b = block_hashes(tokens, BLOCK, [MultimodalSpan(10, 12, B)])
    assert [b.mm_hashes for b in with_a] == [(A,), (A,)]
    assert with_a[0].block_hash != with_b[0].block_hash


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="block_size"):
        block_hashes([1, 2, 3], 0)
    with pytest.raises(ValueError, match="token ids"):
        block_hashes([-1] * 16, 16)
    with pytest.raises(ValueError, match="token ids"):
        block_hashes([2**32] * 16, 16)
    with pytest.raises(ValueError, match="length"):
        MultimodalSpan(0, 0, A)
    with pytest.raises(ValueError, match="64-bit"):
        MultimodalSpan(0, 1, 2**64)
    with pytest.raises(ValueError, match="parent_hash"):
        block_hashes([1] * 16, 16, parent_hash=-1)


@given(
    prefix=st.integers(0, 40),
    image_tokens=st.integers(1, 40),
    suffix=st.integers(0, 40),
    block_size=st.sampled_from([1, 4, 16, 32]),
    hashes=st.lists(st.integers(0, 2**64 - 1), min_size=2, max_size=2, unique=True),
)
def test_property_image_identity_decides_sharing(
    prefix: int, image_tokens: int, suffix: int, block_size: int, hashes: list[int]
) -> None:
    tokens = prompt(prefix, image_tokens, suffix)
    one = block_hashes(tokens, block_size, [MultimodalSpan(prefix, image_tokens, hashes[0])])
    same = block_hashes(tokens, block_size, [MultimodalSpan(prefix, image_tokens, hashes[0])])
    other = block_hashes(tokens, block_size, [MultimodalSpan(prefix, image_tokens, hashes[1])])
    assert one == same
    first_image_block = prefix // block_size
    for a, b in zip(one, other, strict=True):
        assert (a.block_hash == b.block_hash) == (a.index < first_image_block)
    assert all(isinstance(b, BlockInfo) for b in one)
