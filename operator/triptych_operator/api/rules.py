"""Refusing what the API server would refuse: each CEL rule's Python mirror in `validate_spec` /
`validate_update`, so a spec that slipped past CEL (an older CRD, a direct etcd write) still becomes a
permanent error naming the same field.

Entry points: `parse_resource` (a whole object as read from the API), `parse_spec` (only `.spec`),
`validate_update` (the transition rules). They raise `SpecError`, whose `violations` name fields the way the
API server does (``spec.roles.encode.autoscaling.minReplicas``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from triptych_contract import ROLES

from triptych_operator.api.base import (
    DNS_LABEL_MAX,
    MAX_GPUS_PER_POD,
    MAX_NAME_LENGTH,
    NAME_PATTERN,
    RESERVED_ENV_PREFIX,
    TENSOR_PARALLEL_SIZES,
    WORKER_ROLES,
    cel,
)
from triptych_operator.api.quantities import QUANTITY_PATTERN
from triptych_operator.api.roles import RoleBase, WorkerRole
from triptych_operator.api.spec import (
    CPU_BACKENDS,
    CPU_ONLY_BACKENDS,
    NO_RDMA_BACKENDS,
    MultimodalDeploymentSpec,
)


@dataclass(frozen=True)
class Violation:
    """One invalid field: `field` is the path the API server would name (spec.roles.encode.gpus)."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class SpecError(ValueError):
    """A MultimodalDeployment that the API server should have refused (permanent: retrying cannot help)."""

    def __init__(self, violations: Sequence[Violation]) -> None:
        self.violations = list(violations)
        super().__init__("; ".join(str(v) for v in self.violations))

    @property
    def fields(self) -> list[str]:
        return [v.field for v in self.violations]


def _loc_to_path(prefix: str, loc: Sequence[int | str]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _from_validation_error(prefix: str, err: ValidationError) -> SpecError:
    violations = []
    for e in err.errors(include_url=False):
        loc = [p for p in e["loc"] if not (isinstance(p, str) and p in {"int", "str"})]
        violations.append(Violation(_loc_to_path(prefix, loc), e["msg"]))
    return SpecError(violations)


def _check_quantity(field: str, value: int | str, out: list[Violation]) -> None:
    if isinstance(value, int):
        if value < 0:
            out.append(Violation(field, "must be a non-negative quantity"))
    elif not re.fullmatch(QUANTITY_PATTERN, value):
        out.append(Violation(field, f"should match '{QUANTITY_PATTERN}'"))


def validate_name(name: str) -> list[Violation]:
    """Mirror of the CRD's root rules on metadata.name."""
    out = []
    if len(name) > MAX_NAME_LENGTH:
        out.append(Violation("metadata.name", NAME_TOO_LONG_MESSAGE))
    if not re.fullmatch(NAME_PATTERN, name):
        out.append(Violation("metadata.name", NAME_PATTERN_MESSAGE))
    return out


NAME_TOO_LONG_MESSAGE = (
    f"metadata.name must be at most {MAX_NAME_LENGTH} characters so that every derived name "
    f"(<name>-frontend, the longest) fits a {DNS_LABEL_MAX}-character Service name and label value"
)
NAME_PATTERN_MESSAGE = (
    "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter) "
    "because it prefixes Service names"
)
ROOT_RULES = [
    cel(f"self.metadata.name.size() <= {MAX_NAME_LENGTH}", NAME_TOO_LONG_MESSAGE, reason="FieldValueInvalid"),
    cel(f"self.metadata.name.matches('{NAME_PATTERN}')", NAME_PATTERN_MESSAGE, reason="FieldValueInvalid"),
]


def _validate_role(  # noqa: PLR0912 - a flat list of independent checks
    path: str, role: RoleBase, out: list[Violation]
) -> None:
    a = role.autoscaling
    if a is not None:
        if a.min_replicas > a.max_replicas:
            out.append(
                Violation(f"{path}.autoscaling.minReplicas", "must not exceed autoscaling.maxReplicas")
            )
        t = a.targets
        if (
            a.enabled
            and a.scaler == "Builtin"
            and (t is None or (t.queue_depth, t.cache_utilization, t.in_flight) == (None, None, None))
        ):
            out.append(
                Violation(f"{path}.autoscaling.targets", "needs queueDepth, inFlight or cacheUtilization")
            )
        if a.enabled and a.scaler == "Builtin" and not a.min_replicas <= role.replicas <= a.max_replicas:
            out.append(Violation(f"{path}.replicas", "must lie within autoscaling.minReplicas..maxReplicas"))
    for i, env in enumerate(role.env):
        if env.name.startswith(RESERVED_ENV_PREFIX):
            out.append(Violation(f"{path}.env", f"env[{i}] {env.name}: {RESERVED_ENV_PREFIX}* is reserved"))
    names = [e.name for e in role.env]
    for i, env in enumerate(role.env):
        if env.name in names[:i]:
            out.append(Violation(f"{path}.env[{i}]", f"duplicate name {env.name!r}"))
    for i, tol in enumerate(role.tolerations):
        if tol.operator == "Exists" and tol.value:
            out.append(Violation(f"{path}.tolerations[{i}].value", "must be empty with operator Exists"))
    if role.resources is not None:
        for kind in ("requests", "limits"):
            for key, value in getattr(role.resources, kind).items():
                _check_quantity(f"{path}.resources.{kind}.{key}", value, out)
    if isinstance(role, WorkerRole):
        if role.tensor_parallel not in TENSOR_PARALLEL_SIZES:
            out.append(Violation(f"{path}.tensorParallel", "must be a power of two"))
        if role.gpus is not None and role.gpus != role.gpus_per_pod:
            out.append(Violation(f"{path}.gpus", "must equal tensorParallel x dataParallelLocal"))
        if role.gpus_per_pod > MAX_GPUS_PER_POD:
            out.append(
                Violation(f"{path}.dataParallelLocal", f"GPUs per pod must be at most {MAX_GPUS_PER_POD}")
            )


def _validate_ratios(spec: MultimodalDeploymentSpec, out: list[Violation]) -> None:
    for i, bound in enumerate(spec.autoscaling.ratios):
        where = f"spec.autoscaling.ratios[{i}]"
        absent = [r for r in (bound.numerator, bound.denominator) if spec.worker(r) is None]
        if absent:
            out.append(Violation("spec.autoscaling.ratios", f"not in spec.roles: {', '.join(absent)}"))
        if bound.numerator == bound.denominator:
            out.append(Violation(f"{where}.denominator", "a ratio bound needs two different roles"))
        if bound.min is None and bound.max is None:
            out.append(Violation(where, "needs min, max or both"))
        if bound.min is not None and bound.max is not None and bound.min > bound.max:
            out.append(Violation(f"{where}.min", "must not exceed max"))


def _canonical_cidr(text: str) -> bool:
    """Mirror of the CEL rule on networkPolicy.allowedCIDRs: a CIDR, written as its own masked form."""
    try:
        return str(ipaddress.ip_network(text, strict=True)) == text
    except ValueError:
        return False


def _validate_device(spec: MultimodalDeploymentSpec, out: list[Violation]) -> None:
    """The CEL rules on spec.device, mirrored."""
    if spec.device == "cpu":
        if spec.backend not in CPU_BACKENDS:
            out.append(Violation("spec.device", f"cpu is available with {' and '.join(CPU_BACKENDS)} only"))
        if spec.networking.transport == "rdma":
            out.append(Violation("spec.networking.transport", "rdma is not available on CPU"))
        if spec.topology is not None and spec.topology.gpu_product is not None:
            out.append(Violation("spec.topology.gpuProduct", "not available on CPU"))
        for name in WORKER_ROLES:
            w = spec.worker(name)
            if w is not None and w.gpus is not None:
                out.append(Violation(f"spec.roles.{name}.gpus", "a CPU deployment requests no GPUs"))
    if spec.backend in CPU_ONLY_BACKENDS and spec.device == "gpu":
        out.append(Violation("spec.device", "the reference backend runs on CPU"))


def validate_spec(  # noqa: PLR0912 - a flat list of independent checks
    spec: MultimodalDeploymentSpec,
) -> list[Violation]:
    """Python mirror of every CEL rule (and the checks pydantic cannot express); empty when valid."""
    out: list[Violation] = []
    src = spec.model.source
    if src is not None:
        if sum(x is not None for x in (src.pvc, src.hub, src.builtin)) != 1:
            out.append(Violation("spec.model.source", "set exactly one of pvc, hub or builtin"))
        if src.path is not None:
            if src.pvc is None:
                out.append(Violation("spec.model.source.path", "needs model.source.pvc"))
            if ".." in src.path.split("/"):
                out.append(Violation("spec.model.source.path", "must not contain '..' segments"))
    if (spec.media.allowed_local_media_path == "") != (spec.media.local_media_pvc is None):
        out.append(
            Violation("spec.media.localMediaPVC", "goes together with media.allowedLocalMediaPath (set both)")
        )
    if len(set(spec.modalities)) != len(spec.modalities):
        out.append(Violation("spec.modalities", "duplicate entries"))
    _check_quantity("spec.encoderCache.capacity", spec.encoder_cache.capacity, out)
    net = spec.networking
    if net.transport == "rdma" and net.rdma is None:
        out.append(Violation("spec.networking.rdma", "required when transport is rdma"))
    if net.transport == "tcp" and net.rdma is not None:
        out.append(Violation("spec.networking.rdma", "must not be set when transport is tcp"))
    if net.rdma is not None:
        bad = [k for k in net.rdma.ucx if not k.startswith(("UCX_", "NIXL_"))]
        if bad:
            out.append(Violation("spec.networking.rdma.ucx", f"keys must be UCX_*/NIXL_*: {', '.join(bad)}"))
    if spec.backend in NO_RDMA_BACKENDS and net.transport == "rdma":
        out.append(Violation("spec.networking.transport", "rdma is not available with the reference backend"))
    if spec.backend in CPU_ONLY_BACKENDS:
        if spec.topology is not None and spec.topology.gpu_product is not None:
            out.append(Violation("spec.topology.gpuProduct", "not available with the reference backend"))
        for name in WORKER_ROLES:
            w = spec.worker(name)
            if w is not None and (w.gpus is not None or w.tensor_parallel != 1 or w.data_parallel_local != 1):
                out.append(
                    Violation(f"spec.roles.{name}", "the reference backend runs on CPU: no GPU fields")
                )
    _validate_device(spec, out)
    _validate_ratios(spec, out)
    out.extend(
        Violation("spec.networkPolicy.allowedCIDRs", f"{cidr!r} is not a canonical CIDR")
        for cidr in spec.network_policy.allowed_cidrs
        if not _canonical_cidr(cidr)
    )
    if spec.topology is not None and spec.topology.colocate is not None:
        roles = spec.topology.colocate.roles
        if len(set(roles)) != len(roles):
            out.append(Violation("spec.topology.colocate.roles", "duplicate entries"))
        missing = [r for r in roles if spec.worker(r) is None]
        if missing:
            out.append(Violation("spec.topology.colocate.roles", f"not in spec.roles: {', '.join(missing)}"))
    for role_name in ROLES:
        role = spec.role(role_name)
        if role is not None:
            _validate_role(f"spec.roles.{role_name}", role, out)
    return out


def validate_update(old: MultimodalDeploymentSpec, new: MultimodalDeploymentSpec) -> list[Violation]:
    """Python mirror of the transition rules (fields that cannot change in place)."""
    out = []
    if old.backend != new.backend:
        out.append(Violation("spec.backend", "is immutable"))
    if (old.roles.encode is None) != (new.roles.encode is None) or (old.roles.prefill is None) != (
        new.roles.prefill is None
    ):
        out.append(Violation("spec.roles", "the serving mode cannot change in place"))
    return out


def parse_spec(raw: Mapping[str, Any]) -> MultimodalDeploymentSpec:
    """Parse and validate `.spec` (a plain mapping as read from the API). Raises SpecError."""
    try:
        spec = MultimodalDeploymentSpec.model_validate(dict(raw))
    except ValidationError as err:
        raise _from_validation_error("spec", err) from err
    violations = validate_spec(spec)
    if violations:
        raise SpecError(violations)
    return spec


def parse_resource(obj: Mapping[str, Any]) -> MultimodalDeploymentSpec:
    """Parse a whole MultimodalDeployment (metadata.name checked too). Raises SpecError."""
    name = str((obj.get("metadata") or {}).get("name", ""))
    violations = validate_name(name)
    try:
        spec = parse_spec(obj.get("spec") or {})
    except SpecError as err:
        raise SpecError([*violations, *err.violations]) from err
    if violations:
        raise SpecError(violations)
    return spec
