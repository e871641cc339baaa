"""MultimodalRole: one role pool whose replicas a user's HPA, KEDA or `kubectl scale` sets through /scale
(autoscaling.scaler External)."""

from __future__ import annotations

from pydantic import Field

from triptych_operator.api.base import MAX_REPLICAS, ApiModel

ROLE_KIND = "MultimodalRole"
ROLE_PLURAL = "multimodalroles"
ROLE_SHORT_NAMES = ("mmrole",)


class MultimodalRoleSpec(ApiModel):
    """The replicas a user's HorizontalPodAutoscaler, KEDA ScaledObject or `kubectl scale` sets for one role
    of a MultimodalDeployment (the operator creates this object for roles with autoscaling.scaler External,
    and follows spec.replicas)."""

    replicas: int = Field(
        default=1, description="Replicas of the role's pool (the /scale subresource's spec.replicas).", ge=0,
        le=MAX_REPLICAS,
    )  # fmt: skip


class MultimodalRoleStatus(ApiModel):
    """Written by the operator: what the /scale subresource reports."""

    replicas: int = Field(default=0, description="Pods of the role that exist.", ge=0)
    ready: int = Field(default=0, description="Pods of the role that are ready.", ge=0)
    selector: str = Field(
        default="",
        description="Label selector of the role's pods (the /scale subresource's status.selector, which an "
        "HPA uses for pod metrics).",
        max_length=1024,
    )
