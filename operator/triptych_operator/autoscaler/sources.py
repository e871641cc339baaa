"""Where the autoscaler's numbers come from: one small interface, two sources.

- `ScrapeSource` GETs each pod's `/metrics` (the contract's METRICS_PORT) directly, the way the HPA's
  metrics pipeline reads a pod: only pods the caller passes (Ready pods of the role's current ReplicaSet, on
  a real node: never a kwok pod's fake IP), each with a short timeout, a bounded number at once.
- `PrometheusSource` asks a Prometheus server (`/api/v1/query`, one PromQL instant query per metric, grouped
  by pod) for clusters that already scrape the workers; the pods are named by the `namespace` and `pod`
  labels the usual kubernetes_sd relabelling gives (see `tests/e2e/autoscaling` for the scrape config).

Both return, per pod, the value of each metric asked for (the sum over the pod's series of that name,
as a pod is one worker process) or no entry when the pod gave none, plus the series of the degraded-transport
metric that are 1 (a silent RDMA -> TCP fallback, which becomes the TransportDegraded condition).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families
from triptych_contract import METRIC_TRANSPORT_DEGRADED, METRICS_PATH, METRICS_PORT

SCRAPE_TIMEOUT_S = 2.0  # a pod slower than this to answer counts as missing (the HPA's view of it too)
SCRAPE_CONCURRENCY = 32  # pods scraped at once, over every MultimodalDeployment
QUERY_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class PodTarget:
    """A pod to read: its name, and its IP (the scrape source connects to it)."""

    name: str
    ip: str


@dataclass(frozen=True)
class Degraded:
    """One pod's report that its data plane is not the one configured."""

    pod: str
    requested: str
    effective: str
    reason: str


@dataclass(frozen=True)
class PodMetrics:
    values: dict[str, float] = field(default_factory=dict)
    degraded: tuple[Degraded, ...] = ()


class SourceError(Exception):
    """The source as a whole could not answer (Prometheus down); single pods failing are just missing."""


class MetricsSource(Protocol):
    """What the autoscaler reads: per pod, the metrics named (absent pods: no sample)."""

    name: str
    errors: int  # pods (or queries) that could not be read, since the source was made

    async def collect(
        self, namespace: str, pods: Sequence[PodTarget], metrics: Sequence[str]
    ) -> dict[str, PodMetrics]: ...

    async def aclose(self) -> None: ...


# ------------------------------------------------------------------------------------------------ parsing


def parse_exposition(text: str, pod: str, metrics: Sequence[str]) -> PodMetrics:
    """Prometheus text exposition -> the sums of the metrics asked for (a metric with no series is left out,
    so it counts as missing) and the degraded-transport series that are set."""
    wanted = set(metrics)
    values: dict[str, float] = {}
    degraded: list[Degraded] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                values[sample.name] = values.get(sample.name, 0.0) + float(sample.value)
            elif sample.name == METRIC_TRANSPORT_DEGRADED and sample.value >= 1:
                labels = sample.labels
                degraded.append(
                    Degraded(
                        pod,
                        labels.get("requested", ""),
                        labels.get("effective", ""),
                        labels.get("reason", ""),
                    )
                )
    return PodMetrics(values, tuple(degraded))


# ------------------------------------------------------------------------------------------------ scrape


class ScrapeSource:
    """Reads each pod's /metrics over HTTP (see the module docstring)."""

    name = "scrape"

    def __init__(self, *, port: int = METRICS_PORT, timeout_s: float = SCRAPE_TIMEOUT_S) -> None:
        self._port = port
        # No proxies from the environment, no redirects: a pod IP is reached directly or not at all.
        self._client = httpx.AsyncClient(timeout=timeout_s, trust_env=False, follow_redirects=False)
        self._slots = asyncio.Semaphore(SCRAPE_CONCURRENCY)
        self.errors = 0  # pods that did not answer (for the operator's own metrics)

    async def _one(self, pod: PodTarget, metrics: Sequence[str]) -> PodMetrics | None:
        host = f"[{pod.ip}]" if ":" in pod.ip else pod.ip
        async with self._slots:
            try:
                response = await self._client.get(f"http://{host}:{self._port}{METRICS_PATH}")
                response.raise_for_status()
                return parse_exposition(response.text, pod.name, metrics)
            except (httpx.HTTPError, ValueError):
                self.errors += 1
                return None

    async def collect(
        self, namespace: str, pods: Sequence[PodTarget], metrics: Sequence[str]
    ) -> dict[str, PodMetrics]:
        del namespace  # pod IPs are unique cluster-wide
        found = await asyncio.gather(*(self._one(p, metrics) for p in pods))
        return {p.name: m for p, m in zip(pods, found, strict=True) if m is not None}

    async def aclose(self) -> None:
        await self._client.aclose()


# ------------------------------------------------------------------------------------------------ Prometheus

_LABEL_VALUE = re.compile(r"^[A-Za-z0-9._-]+$")  # namespaces and pod names: no quoting surprises


def pod_query(metric: str, namespace: str, pods: Sequence[str]) -> str:
    """The PromQL for one metric of some pods, one series per pod."""
    for value in (namespace, *pods):
        if not _LABEL_VALUE.match(value):
            raise ValueError(f"not a Kubernetes name: {value!r}")
    return f'sum by (pod) ({metric}{{namespace="{namespace}",pod=~"{_alternatives(pods)}"}})'


def _alternatives(pods: Sequence[str]) -> str:
    """The pods as one PromQL regex: of a Kubernetes name's characters only the dot is special in a regex,
    escaped with a backslash that a PromQL string needs written twice (and PromQL refuses a needless
    escape such as one before a hyphen, which re.escape would write)."""
    return "|".join(p.replace(".", "\\\\.") for p in pods)


def degraded_query(namespace: str, pods: Sequence[str]) -> str:
    for value in (namespace, *pods):
        if not _LABEL_VALUE.match(value):
            raise ValueError(f"not a Kubernetes name: {value!r}")
    return f'{METRIC_TRANSPORT_DEGRADED}{{namespace="{namespace}",pod=~"{_alternatives(pods)}"}} == 1'


def parse_vector(body: Mapping[str, object]) -> list[tuple[dict[str, str], float]]:
    """A Prometheus instant-query answer (`resultType: vector`) -> (labels, value) pairs."""
    if body.get("status") != "success":
        raise SourceError(f"Prometheus query failed: {body.get('errorType')}: {body.get('error')}")
    data = body.get("data")
    if not isinstance(data, Mapping) or data.get("resultType") != "vector":
        raise SourceError(f"Prometheus answered no vector: {str(data)[:200]}")
    out: list[tuple[dict[str, str], float]] = []
    for item in data.get("result") or []:
        labels = {str(k): str(v) for k, v in (item.get("metric") or {}).items()}
        _, value = item.get("value") or (0, "NaN")
        out.append((labels, float(value)))
    return out


class PrometheusSource:
    """Reads the same metrics from a Prometheus server (see the module docstring)."""

    name = "prometheus"

    def __init__(self, url: str, *, timeout_s: float = QUERY_TIMEOUT_S) -> None:
        self._url = url.rstrip("/")
        self._client = httpx.AsyncClient(timeout=timeout_s, trust_env=False)
        self.errors = 0

    async def _query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        try:
            response = await self._client.get(f"{self._url}/api/v1/query", params={"query": promql})
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            self.errors += 1
            raise SourceError(f"Prometheus at {self._url}: {type(exc).__name__}: {exc}") from exc
        try:
            return parse_vector(body)
        except SourceError:
            self.errors += 1
            raise

    async def collect(
        self, namespace: str, pods: Sequence[PodTarget], metrics: Sequence[str]
    ) -> dict[str, PodMetrics]:
        if not pods:
            return {}
        names = [p.name for p in pods]
        answers = await asyncio.gather(
            *(self._query(pod_query(m, namespace, names)) for m in metrics),
            self._query(degraded_query(namespace, names)),
        )
        out: dict[str, PodMetrics] = {}
        for metric, series in zip(metrics, answers[:-1], strict=True):
            for labels, value in series:
                pod = labels.get("pod", "")
                if pod in names and not math.isnan(value):  # NaN: no sample
                    out.setdefault(pod, PodMetrics()).values[metric] = value
        for labels, _ in answers[-1]:
            pod = labels.get("pod", "")
            if pod in names:
                entry = out.setdefault(pod, PodMetrics())
                flag = Degraded(pod, labels.get("requested", ""), labels.get("effective", ""),
                                labels.get("reason", ""))  # fmt: skip
                out[pod] = PodMetrics(entry.values, (*entry.degraded, flag))
        return out

    async def aclose(self) -> None:
        await self._client.aclose()


__all__ = [
    "Degraded",
    "MetricsSource",
    "PodMetrics",
    "PodTarget",
    "PrometheusSource",
    "ScrapeSource",
    "SourceError",
    "degraded_query",
    "parse_exposition",
    "parse_vector",
    "pod_query",
]
