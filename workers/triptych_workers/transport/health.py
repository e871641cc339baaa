"""Detecting a configured RDMA transport that silently ends up on TCP.

UCX picks its transports at run time from ``UCX_TLS`` and the devices it finds; a profile that pins
``UCX_TLS=tcp`` (or a pod without its RDMA device) still "works", ten times slower (REFERENCE.md). Two
checks, both cheap enough to run once at start-up:

* the environment: ``UCX_TLS`` set to a list with no RDMA-capable transport (rc/dc/ud and their variants,
  ``ib``, EFA's ``srd``), or excluding them all with ``^``;
* what UCX itself reports: a throw-away NIXL agent is created in a child process with ``UCX_LOG_LEVEL=info``,
  whose worker prints the transports it selected (``rma_am(tcp/lo) am(tcp/lo cma/memory)``); no
  rc/dc/ud/srd there means no RDMA, whatever was requested. A child process, because UCX logs to the C
  stderr of the process and a probe must not disturb the worker's own agent.

The result becomes ``triptych_transport_degraded{requested, effective, reason} 1`` and one WARNING line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from triptych_workers.transport.metrics import TransportMetrics

log = logging.getLogger(__name__)

RequestedTransport = Literal["auto", "rdma", "tcp"]

# UCX transport names that move data over an RDMA fabric (InfiniBand/RoCE verbs, mlx5 accelerated, EFA).
_RDMA_PREFIXES = ("rc", "dc", "ud", "ib", "srd", "mlx5")
# A worker line: "UCX INFO  A self cfg#0 rma_am(tcp/lo) amo_am(tcp/lo) am(tcp/lo cma/memory)"
_CFG_LINE = re.compile(r"cfg#\d+\s+(.*)$")
_LANE = re.compile(r"\(([^)]*)\)")


def _is_rdma(transport: str) -> bool:
    return transport.lower().startswith(_RDMA_PREFIXES)


def parse_ucx_transports(log_text: str) -> frozenset[str]:
    """Transport names (``tcp``, ``cma``, ``rc_mlx5``...) from UCX's info-level worker configuration lines."""
    found: set[str] = set()
    for line in log_text.splitlines():
        match = _CFG_LINE.search(line)
        if not match:
            continue
        for lane in _LANE.findall(match.group(1)):
            for item in lane.split():
                found.add(item.split("/", 1)[0])
    return frozenset(found)


@dataclass(frozen=True)
class TransportHealth:
    requested: RequestedTransport
    effective: str  # "rdma", "tcp", or "unknown"
    degraded: bool
    reason: str  # "" when healthy
    ucx_transports: frozenset[str] | None = None


def assess(
    requested: RequestedTransport,
    env: Mapping[str, str],
    ucx_transports: frozenset[str] | None,
) -> TransportHealth:
    """Pure decision: is what UCX uses (or is allowed to use) what was asked for?"""
    effective = "unknown"
    if ucx_transports is not None:
        effective = "rdma" if any(_is_rdma(t) for t in ucx_transports) else "tcp"
    if requested != "rdma":
        return TransportHealth(requested, effective, False, "", ucx_transports)
    tls = env.get("UCX_TLS", "").strip()
    if tls:
        items = [t.strip() for t in tls.split(",") if t.strip()]
        excluded = tls.startswith("^")
        names = [items[0][1:], *items[1:]] if excluded and items else items
        rdma_named = [n for n in names if _is_rdma(n)]
        if excluded:  # "^a,b": everything but those; RDMA survives unless every verbs family is excluded
            families = {n.split("_", 1)[0] for n in rdma_named}
            allows_rdma = not ("ib" in families or {"rc", "dc", "ud"} <= families)
        else:
            allows_rdma = "all" in names or bool(rdma_named)
        if not allows_rdma:
            return TransportHealth(requested, "tcp", True, "ucx_tls_excludes_rdma", ucx_transports)
    if ucx_transports is not None and effective != "rdma":
        return TransportHealth(requested, effective, True, "ucx_selected_no_rdma", ucx_transports)
    return TransportHealth(requested, effective, False, "", ucx_transports)


_PROBE = (
    "from nixl._api import nixl_agent, nixl_agent_config; nixl_agent('triptych-probe', nixl_agent_config())"
)


async def probe_ucx_transports(timeout_s: float = 30.0) -> frozenset[str] | None:
    """The transports UCX selects in this environment, from a throw-away agent; None if it cannot tell."""
    env = {**os.environ, "UCX_LOG_LEVEL": "info"}
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _PROBE, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    except OSError as exc:
        log.warning("cannot run the UCX transport probe: %s", exc)
        return None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        log.warning("the UCX transport probe did not finish within %.0f s", timeout_s)
        return None
    transports = parse_ucx_transports(out.decode("utf-8", "replace"))
    return transports or None


def report(health: TransportHealth, metrics: TransportMetrics) -> None:
    """Publish ``health`` as the degraded gauge and, when degraded, a WARNING the operator can surface."""
    metrics.degraded.labels(health.requested, health.effective, health.reason or "none").set(
        1 if health.degraded else 0
    )
    if health.degraded:
        log.warning(
            "transport degraded: requested=%s effective=%s reason=%s ucx_transports=%s UCX_TLS=%r",
            health.requested,
            health.effective,
            health.reason,
            ",".join(sorted(health.ucx_transports or ())) or "unknown",
            os.environ.get("UCX_TLS", ""),
        )
    else:
        log.info("transport: requested=%s effective=%s", health.requested, health.effective)
