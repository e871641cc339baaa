"""``TensorBuffer``: how a tensor crosses a process boundary, torch-free.

One C-contiguous byte buffer plus shape and dtype name: that is what the data plane registers with NIXL (or
sends inline over NATS) without knowing anything about torch, and what the receiving engine views again as a
tensor without a copy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# The dtype names a TensorBuffer may carry; numpy understands all of them. (bfloat16 has no numpy dtype:
# a backend exporting bf16 sends it as "bfloat16" over uint16 bytes; the reference engine stays in float32.)
TENSOR_DTYPES = frozenset({"float32", "float16", "bfloat16", "int64", "int32", "uint8"})


@dataclass(frozen=True, slots=True)
class TensorBuffer:
    """A dense tensor as one C-contiguous byte buffer plus its shape and dtype name.

    ``data`` is a 1-D ``uint8`` array: NIXL registers it as (address, length), the inline transport sends
    ``data.tobytes()``, and ``from_bytes`` rebuilds it on the far side without knowing what it holds.
    """

    data: npt.NDArray[np.uint8]
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        if self.dtype not in TENSOR_DTYPES:
            raise ValueError(f"unsupported tensor dtype {self.dtype!r}")
        if self.data.dtype != np.uint8 or self.data.ndim != 1 or not self.data.flags.c_contiguous:
            raise ValueError("TensorBuffer.data must be a contiguous 1-D uint8 array")
        itemsize = 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize
        if self.data.nbytes != math.prod(self.shape) * itemsize:
            raise ValueError(f"buffer of {self.data.nbytes} bytes does not hold {self.shape} x {self.dtype}")

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    @classmethod
    def from_array(cls, array: npt.NDArray[Any]) -> TensorBuffer:
        """Wraps an array (copied only if it is not C-contiguous already)."""
        contiguous = np.ascontiguousarray(array)
        return cls(contiguous.reshape(-1).view(np.uint8), tuple(contiguous.shape), str(contiguous.dtype))

    @classmethod
    def from_bytes(
        cls, payload: bytes | bytearray | memoryview, shape: Sequence[int], dtype: str
    ) -> TensorBuffer:
        """Rebuilds a buffer received from the data plane (zero-copy over ``payload``)."""
        return cls(np.frombuffer(payload, dtype=np.uint8), tuple(int(d) for d in shape), dtype)

    def array(self) -> npt.NDArray[Any]:
        """A zero-copy numpy view with the original shape and dtype (bfloat16 is viewed as uint16)."""
        view_dtype = np.uint16 if self.dtype == "bfloat16" else np.dtype(self.dtype)
        return self.data.view(view_dtype).reshape(self.shape)

    def tobytes(self) -> bytes:
        return self.data.tobytes()
