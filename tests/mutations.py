"""Hypothesis strategy shared by the decoders' property-based tests: real media files, damaged the ways files
get damaged (cut short, bits flipped, bytes inserted, deleted or overwritten). Mutations of valid files reach
far deeper into a decoder than random bytes, which rarely get past the magic number."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hypothesis import strategies as st


@st.composite
def mutated(draw: st.DrawFn, samples: Callable[[], Sequence[bytes]]) -> bytes:
    """One of ``samples()`` with one to four damages applied. A callable, so the samples (encoded with PyAV)
    are made when the test first draws, not when pytest imports the module."""
    data = bytearray(draw(st.sampled_from(samples())))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "overwrite"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "truncate":
            del data[pos:]
        elif op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 32))]
        else:
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos : pos + len(chunk)] = chunk
    return bytes(data)
