"""The GPU backends' serving cases, shared by the checks that judge their command lines against each engine's
own parser or schema (tests/integration/backends, tests/unit/operator/test_trtllm_schema.py)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

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
# The roles each mode has, written out (not derived from the spec) so that a case the builders lose shows.
ROLES_BY_MODE: dict[str, set[str]] = {
    "E/P/D": {"encode", "prefill", "decode"},
    "E/PD": {"encode", "decode"},
    "EP/D": {"prefill", "decode"},
    "EPD": {"decode"},
}


def serving_specs(
    backend: str, model: str, examples: Sequence[Path]
) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """(case name prefix, raw spec, whether nodes advertise RDMA) for every mode over both transports, then
    for each example file."""
    for mode, roles in MODES.items():
        for transport, networking in TRANSPORTS.items():
            raw = {"backend": backend, "model": {"name": model}, "networking": networking, "roles": roles}
            yield f"{mode}-{transport}", raw, transport == "rdma"
    for path in examples:
        raw = yaml.safe_load(path.read_text())["spec"]
        yield path.stem, raw, raw.get("networking", {}).get("transport") == "rdma"


def uncovered(case_ids: Iterable[str]) -> list[str]:
    """Modes and transports whose generated cases (named `<mode>-<transport>-<role>`) lack or add a role."""
    ids = list(case_ids)
    out = []
    for mode, present in ROLES_BY_MODE.items():
        for transport in TRANSPORTS:
            got = {c.rsplit("-", 1)[1] for c in ids if c.startswith(f"{mode}-{transport}-")}
            if got != present:
                out.append(f"{mode}-{transport}: {sorted(got)} instead of {sorted(present)}")
    return out
