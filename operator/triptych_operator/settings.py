"""Operator settings: one object, built once in main() from the environment and passed explicitly.

pydantic-settings is not a dependency; `OperatorSettings.from_env()` reads `TRIPTYCH_OPERATOR_*` variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from triptych_contract import Backend
from triptych_contract.backends import BACKEND_FACTS

ENV_PREFIX = "TRIPTYCH_OPERATOR_"
# The NATS Service the chart installs (`nats.enabled`, release `triptych` in `triptych-system`).
DEFAULT_NATS_URL = "nats://triptych-nats.triptych-system.svc:4222"


class OperatorSettings(BaseModel):
    """What the builders need besides the spec. Backends' defaults (image, /dev/shm) are the contract's
    (`triptych_contract.backends`); this holds only what the environment overrides.

    Environment (all optional): TRIPTYCH_OPERATOR_IMAGE_<BACKEND> (VLLM, SGLANG, TRTLLM, REFERENCE),
    TRIPTYCH_OPERATOR_FRONTEND_IMAGE, TRIPTYCH_OPERATOR_IMAGE_PULL_POLICY, TRIPTYCH_OPERATOR_NATS_URL,
    TRIPTYCH_OPERATOR_SHM_<BACKEND> (a quantity), TRIPTYCH_OPERATOR_PROGRESS_DEADLINE_SECONDS,
    TRIPTYCH_OPERATOR_METRICS_SOURCE (scrape | prometheus), TRIPTYCH_OPERATOR_PROMETHEUS_URL,
    TRIPTYCH_OPERATOR_CONCURRENCY, TRIPTYCH_OPERATOR_RESYNC_SECONDS.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    images: dict[Backend, str] = Field(
        default_factory=dict,
        description="Worker image per backend, where not the backend's default (the images `hack/images` "
        "builds into the local cluster's node; elsewhere the chart's values name a registry's).",
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
    # /dev/shm (a memory emptyDir) of worker pods per backend, where not the backend's default.
    shm_sizes: dict[Backend, str] = Field(default_factory=dict)
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
        return self.images.get(backend) or BACKEND_FACTS[backend].default_image

    def shm_size_for(self, backend: Backend) -> str:
        return self.shm_sizes.get(backend) or BACKEND_FACTS[backend].shm_size

    def worker_images(self) -> dict[Backend, str]:
        """Every backend's worker image as the builders will use it (for the start-up log)."""
        return {backend: self.image_for(backend) for backend in BACKEND_FACTS}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if environ is None else environ

        def get(key: str) -> str | None:
            value = env.get(ENV_PREFIX + key)
            return value if value else None

        images: dict[Backend, str] = {}
        shm: dict[Backend, str] = {}
        for backend in BACKEND_FACTS:
            if image := get(f"IMAGE_{backend.upper()}"):
                images[backend] = image
            if size := get(f"SHM_{backend.upper()}"):
                shm[backend] = size
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
