"""The GPU backends' serving cases, shared by the checks that judge their command lines against each engine's
own parser or schema (tests/integration/backends, tests/unit/operator/test_trtllm_schema.py)."""

from __future__ import annotations

from typing import Any

# Every serving mode: which worker roles are present. Tensor and data parallelism > 1 on the pools so that
# both sizes are written.
MODES: dict[str, dict[str, Any]] = {
    "E/P/D": {"encode": {}, "prefill": {"tensorParallel": 2}, "decode": {"tensorParallel": 2}},
    "E/PD": {"encode": {}, "decode": {"tensorParallel": 2, "dataParallelLocal": 2}},
    "EP/D": {"prefill": {"tensorParallel": 2}, "decode": {"tensorParallel": 2, "dataParallelLocal": 2}},
    "EPD": {"decode": {"tensorParallel": 1, "dataParallelLocal": 2}},
}
TRANSPORTS: dict[str, dict[str, Any]] = {
    "tcp": {"transport": "tcp"},
    "rdma": {"transport": "rdma", "rdma": {"resource": "rdma/ib", "count": 1}},
}
