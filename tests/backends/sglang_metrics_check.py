"""Makes SGLang's own scheduler metrics collector export given load figures, and prints its ``/metrics`` text.

Executed by the python of the separate SGLang venv (`hack/backend-venv sglang`), never imported by the
project's tests: `tests/integration/backends/test_sglang_metrics.py` sends JSON on stdin and parses the
answer with the workers' own ``parse_load``.

Input: ``{"scenarios": [{"id", "disaggregation_mode", "priority_scheduling", "schedulers": [STATS, ...]}]}``
where each STATS maps ``SchedulerStats`` field names to numbers, or, for a queue, to ``{"total": N,
"by_priority": {"0": n, ...}}`` (a ``QueueCount``). Output: ``{"sglang": VERSION, "expositions": {id:
TEXT}}``.

Each scenario is served the way SGLang serves it: SGLang's metrics run in Prometheus' multiprocess mode, each
scheduler process (one per data-parallel rank) writes its gauges into ``PROMETHEUS_MULTIPROC_DIR``, and the
HTTP server's ``/metrics`` is a ``MultiProcessCollector`` over that directory
(``sglang.srt.utils.common.add_prometheus_middleware``). So every scheduler is a forked child that builds its
collector through ``SchedulerMetricsCollector.init_new`` (SGLang's own labels: model, engine type, ranks,
priority) and calls ``log_stats``; the configuration it reads is published with SGLang's own test hooks
(``RuntimeContext.override_server_args``, ``get_parallel().override_permanently``), since the launcher
that publishes it needs an accelerator.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
from typing import Any

MODEL = "stand-in-model"


def stats_of(module: Any, fields: dict[str, Any]) -> Any:
    """A ``SchedulerStats`` with ``fields`` (queues as ``QueueCount``)."""
    values: dict[str, Any] = {}
    for name, value in fields.items():
        if isinstance(value, dict):
            by_priority = value.get("by_priority")
            if by_priority is not None:
                by_priority = {int(priority): count for priority, count in by_priority.items()}
            values[name] = module.QueueCount(total=value["total"], by_priority=by_priority)
        else:
            values[name] = value
    return module.SchedulerStats(**values)


def run_scheduler(scenario: dict[str, Any], dp_rank: int, fields: dict[str, Any]) -> None:
    """One scheduler process's part: its collector, as SGLang builds it, logging one round of stats."""
    runtime = importlib.import_module("sglang.srt.runtime_context")
    collectors = importlib.import_module("sglang.srt.observability.metrics_collector")
    priority = bool(scenario["priority_scheduling"])
    runtime.get_context().override_server_args(
        enable_metrics=True,
        served_model_name=MODEL,
        disaggregation_mode=scenario["disaggregation_mode"],
        enable_priority_scheduling=priority,
    ).install()
    ranks = {"tp_rank": 0, "pp_rank": 0, "moe_ep_rank": 0, "attn_tp_rank": 0, "attn_cp_rank": 0}
    runtime.get_parallel().override_permanently(**ranks, dp_rank=dp_rank)
    context = collectors.SchedulerMetricsCollector.init_new(
        server_args=runtime.get_server_args(),
        enable_priority_scheduling=priority,
        enable_lora=False,
        enable_hierarchical_cache=False,
    )
    context.collector.log_stats(stats_of(collectors, fields))


def exposition(scenario: dict[str, Any]) -> str:
    with tempfile.TemporaryDirectory(prefix="sglang-metrics-") as directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        for dp_rank, fields in enumerate(scenario["schedulers"]):
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    run_scheduler(scenario, dp_rank, fields)
                except BaseException as error:  # the parent reports it; a child must never return
                    print(f"scheduler {dp_rank}: {type(error).__name__}: {error}", file=sys.stderr)
                    code = 1
                os._exit(code)
            _, status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise RuntimeError(f"{scenario['id']}: scheduler {dp_rank} failed")
        client = importlib.import_module("prometheus_client")
        multiprocess = importlib.import_module("prometheus_client.multiprocess")
        registry = client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        return str(client.generate_latest(registry).decode())


def main() -> int:
    request = json.load(sys.stdin)
    out, sys.stdout = sys.stdout, sys.stderr  # SGLang's own prints must not corrupt the answer
    expositions = {scenario["id"]: exposition(scenario) for scenario in request["scenarios"]}
    version = importlib.import_module("importlib.metadata").version("sglang")
    json.dump({"sglang": version, "expositions": expositions}, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
