"""The MultimodalDeployment API: pydantic models that are the single source of the CRDs (`hack/gen-crd`),
and the checks that refuse what the API server would refuse.

- `base`: the base model, the CEL rule helper, names, limits and patterns every model shares;
- `quantities`: Kubernetes quantities (schema and value);
- `sections`: the spec's sections other than the roles (model, media, serving, networking, topology ...);
- `roles`: the role pools and their autoscaling;
- `spec`: `MultimodalDeploymentSpec`, the rules across sections, and what the operator asks of a spec;
- `status`: what the operator writes into `.status`;
- `multimodal_role`: the MultimodalRole whose /scale a user's HPA or KEDA drives;
- `rules`: `parse_resource`, `parse_spec`, `validate_update` and `SpecError`.

The names below are the ones the rest of the operator uses; the modules hold the rest.
"""

from __future__ import annotations

from triptych_contract.backends import Device

from triptych_operator.api.base import MAX_NAME_LENGTH, WORKER_ROLES, Mode, Role, WorkerRoleName
from triptych_operator.api.multimodal_role import (
    ROLE_KIND,
    ROLE_PLURAL,
    ROLE_SHORT_NAMES,
    MultimodalRoleSpec,
    MultimodalRoleStatus,
)
from triptych_operator.api.quantities import parse_quantity
from triptych_operator.api.roles import (
    AutoscalingSpec,
    AutoscalingTargets,
    DeploymentAutoscalingSpec,
    RatioBound,
    RoleBase,
    ScalingBehaviorSpec,
    ScalingRulesSpec,
    WorkerRole,
)
from triptych_operator.api.rules import (
    ROOT_RULES,
    SpecError,
    Violation,
    parse_resource,
    parse_spec,
    validate_spec,
    validate_update,
)
from triptych_operator.api.sections import BUILTIN_MODELS, REFERENCE_BUILTIN, BuiltinModel
from triptych_operator.api.spec import MultimodalDeploymentSpec
from triptych_operator.api.status import Condition, MultimodalDeploymentStatus, RoleStatus

__all__ = [
    "BUILTIN_MODELS",
    "MAX_NAME_LENGTH",
    "REFERENCE_BUILTIN",
    "ROLE_KIND",
    "ROLE_PLURAL",
    "ROLE_SHORT_NAMES",
    "ROOT_RULES",
    "WORKER_ROLES",
    "AutoscalingSpec",
    "AutoscalingTargets",
    "BuiltinModel",
    "Condition",
    "DeploymentAutoscalingSpec",
    "Device",
    "Mode",
    "MultimodalDeploymentSpec",
    "MultimodalDeploymentStatus",
    "MultimodalRoleSpec",
    "MultimodalRoleStatus",
    "RatioBound",
    "Role",
    "RoleBase",
    "RoleStatus",
    "ScalingBehaviorSpec",
    "ScalingRulesSpec",
    "SpecError",
    "Violation",
    "WorkerRole",
    "WorkerRoleName",
    "parse_quantity",
    "parse_resource",
    "parse_spec",
    "validate_spec",
    "validate_update",
]
