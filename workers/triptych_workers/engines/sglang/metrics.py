"""The gauges of SGLang's ``/metrics`` that give the contract's load figures (see the package docstring)."""

from __future__ import annotations

from triptych_workers.engines.load import LoadGauges

# sglang/srt/observability/metrics_collector.py (SchedulerMetricsCollector), one series per scheduler
# (``dp_rank``), labelled ``priority`` when priority scheduling is on (the total under ``priority=""``).
# Waiting: the scheduler's waiting queue, plus what a disaggregated server holds before a request can run:
# a prefill server's bootstrap queue (waiting for its decode peer's handshake) and a decode server's
# pre-allocation queue (waiting for KV slots) and transfer queue (its KV still arriving). Not counted: the
# prefill inflight queue (computed, only sending) and the decode host-receive queue (a part of the
# transfer queue, which would count twice). Usage: ``token_usage`` is the fullest of SGLang's KV pools.
SGLANG_LOAD = LoadGauges(
    backend="SGLang",
    waiting="sglang:num_queue_reqs",
    running="sglang:num_running_reqs",
    kv_cache_usage="sglang:token_usage",
    also_waiting=(
        "sglang:num_prefill_bootstrap_queue_reqs",
        "sglang:num_decode_prealloc_queue_reqs",
        "sglang:num_decode_transfer_queue_reqs",
    ),
    breakdown_label="priority",
)

__all__ = ["SGLANG_LOAD"]
