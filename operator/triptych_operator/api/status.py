"""The MultimodalDeployment's status, as the operator writes it (kstatus conditions, per-role state)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from triptych_operator.api.base import ApiModel, Mode


class Condition(ApiModel):
    """A status condition (metav1.Condition's shape)."""

    type: str = Field(
        description="Ready, Reconciling, Stalled (kstatus) or TransportDegraded.", max_length=316
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason of the last change.", max_length=1024)
    message: str = Field(default="", description="Human-readable detail.", max_length=32768)
    last_transition_time: datetime = Field(
        description="When status last flipped.", json_schema_extra={"format": "date-time"}
    )
    observed_generation: int = Field(
        default=0, description="metadata.generation this condition reflects.", ge=0
    )


class RoleStatus(ApiModel):
    """Observed state of one role pool."""

    desired: int = Field(default=0, description="Replicas the operator wants (spec or autoscaler).", ge=0)
    replicas: int = Field(default=0, description="Pods that exist.", ge=0)
    ready: int = Field(default=0, description="Pods that are ready.", ge=0)
    updated: int = Field(default=0, description="Pods running the current template.", ge=0)
    queue_depth: float | None = Field(
        default=None, description="Requests waiting per ready replica, as the autoscaler last saw it.", ge=0
    )
    in_flight: float | None = Field(
        default=None,
        description="Requests being served per ready replica, as the autoscaler last saw it.",
        ge=0,
    )
    cache_utilization: float | None = Field(
        default=None,
        description="Cache utilization per ready replica in percent (encoder cache on encode, KV cache on "
        "prefill/decode), as the autoscaler last saw it.",
        ge=0,
        le=100,
    )
    pending: int | None = Field(
        default=None,
        description="Requests the frontends hold for this role while it has no ready replica (encode at "
        "zero).",
        ge=0,
    )
    last_scale_time: datetime | None = Field(
        default=None,
        description="When the autoscaler last changed desired.",
        json_schema_extra={"format": "date-time"},
    )
    scaler: str = Field(
        default="",
        description="Who sets this role's replicas: Spec (spec.roles.<role>.replicas), Builtin (the "
        "operator's autoscaler) or External (the role's MultimodalRole /scale).",
        max_length=16,
    )
    scaling: str = Field(default="", description="The autoscaler's last decision and why.", max_length=1024)
    reason: str = Field(default="", description="Why the role is not ready, if it is not.", max_length=1024)


class MultimodalDeploymentStatus(ApiModel):
    """Observed state, written by the operator."""

    observed_generation: int = Field(default=0, description="metadata.generation last reconciled.", ge=0)
    mode: Mode | None = Field(default=None, description="Serving mode: E/P/D, E/PD, EP/D or EPD.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Reconciling and Stalled (kstatus polarity).",
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    roles: dict[str, RoleStatus] = Field(default_factory=dict, description="Per-role state, keyed by role.")
    summary: dict[str, str] = Field(
        default_factory=dict, description="Per-role 'ready/desired' (e.g. 2/2) for kubectl get's columns."
    )
