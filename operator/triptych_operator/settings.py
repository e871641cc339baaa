"""Operator settings: one object, built once in main() from the environment and passed explicitly.

pydantic-settings is not a dependency; `OperatorSettings.from_env()` reads `TRIPTYCH_OPERATOR_*` variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from triptych_contract import Backend

from triptych_operator.builders.backends import PROFILES

ENV_PREFIX = "TRIPTYCH_OPERATOR_"
# The NATS Service the chart installs (`nats.enabled`, release `triptych` in `triptych-system`).
DEFAULT_NATS_URL = "nats://triptych-nats.triptych-system.svc:4222"


def _default_images() -> dict[Backend, str]:
    """Each profile's default: the images `hack/images` builds into the local cluster's node; elsewhere the
    chart's values name a registry's."""
    return {backend: profile.default_image for backend, profile in PROFILES.items()}


def _default_shm_sizes() -> dict[Backend, str]:
    return {backend: profile.shm_size for backend, profile in PROFILES.items()}


class OperatorSettings(BaseModel):
    """What the builders need besides the spec.

    Environment (all optional): TRIPTYCH_OPERATOR_IMAGE_<BACKEND> (VLLM, SGLANG, TRTLLM, REFERENCE),
    TRIPTYCH_OPERATOR_FRONTEND_IMAGE, TRIPTYCH_OPERATOR_IMAGE_PULL_POLICY, TRIPTYCH_OPERATOR_NATS_URL,
    TRIPTYCH_OPERATOR_SHM_<BACKEND> (a quantity), TRIPTYCH_OPERATOR_PROGRESS_DEADLINE_SECONDS,
    TRIPTYCH_OPERATOR_METRICS_SOURCE (scrape | prometheus), TRIPTYCH_OPERATOR_PROMETHEUS_URL,
    TRIPTYCH_OPERATOR_CONCURRENCY, TRIPTYCH_OPERATOR_RESYNC_SECONDS.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    images: dict[Backend, str] = Field(
        default_factory=_default_images, description="Worker image per backend."
    )
    frontend_image: str | None = Field(
        default=None,
        description="Frontend image; default: the backend's worker image (it has triptych-worker).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    nats_url: str = Field(
        default=DEFAULT_NATS_URL,
        description="The request plane every role of every MultimodalDeployment joins (one NATS for the "
        "cluster; subjects carry namespace and deployment).",
    )
    # /dev/shm (a memory emptyDir) of worker pods per backend; each profile says what its engine needs.
    shm_sizes: dict[Backend, str] = Field(default_factory=_default_shm_sizes)
    progress_deadline_seconds: int = Field(default=1200, ge=60)
    # Where the autoscaler reads the workers' metrics: their pods' /metrics, or a Prometheus server.
    metrics_source: Literal["scrape", "prometheus"] = "scrape"
    prometheus_url: str | None = Field(
        default=None, description="Base URL of the Prometheus HTTP API (metrics_source prometheus)."
    )

    # Reconciles (and so API requests) at once over all MultimodalDeployments: the worker threads and the
    # API client's connection pool. More waits less in a burst, at the API server's expense.
    concurrency: int = Field(default=16, ge=1, le=256)
    # Every MultimodalDeployment is reconciled afresh from the API (not the cache) once per this period,
    # spread over it, catching anything a watch missed; 0: never.
    resync_seconds: int = Field(default=3600, ge=0)

    @model_validator(mode="after")
    def _prometheus_needs_url(self) -> OperatorSettings:
        if self.metrics_source == "prometheus" and not self.prometheus_url:
            raise ValueError("metrics_source prometheus needs TRIPTYCH_OPERATOR_PROMETHEUS_URL")
        return self

    def image_for(self, backend: Backend) -> str:
        return self.images[backend]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if environ is None else environ

        def get(key: str) -> str | None:
            value = env.get(ENV_PREFIX + key)
            return value if value else None

        defaults = cls()
        images = dict(defaults.images)
        shm = dict(defaults.shm_sizes)
        for backend in list(images):
            images[backend] = get(f"IMAGE_{backend.upper()}") or images[backend]
            shm[backend] = get(f"SHM_{backend.upper()}") or shm[backend]
        values: dict[str, object] = {"images": images, "shm_sizes": shm}
        for key, field in (
            ("FRONTEND_IMAGE", "frontend_image"),
            ("IMAGE_PULL_POLICY", "image_pull_policy"),
            ("NATS_URL", "nats_url"),
            ("PROGRESS_DEADLINE_SECONDS", "progress_deadline_seconds"),
            ("METRICS_SOURCE", "metrics_source"),
            ("PROMETHEUS_URL", "prometheus_url"),
            ("CONCURRENCY", "concurrency"),
            ("RESYNC_SECONDS", "resync_seconds"),
        ):
            value = get(key)
            if value is not None:
                values[field] = value
        return cls.model_validate(values)
