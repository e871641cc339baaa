"""Refusing what the API server would refuse, so a spec that slipped past it (an older CRD, a direct etcd
write) still becomes a permanent error naming the same field: pydantic's checks, the schema's checks that
pydantic cannot make, and the CRD's own CEL rules evaluated from their text (`cel_rules`; no Python copy).

Entry points: `parse_resource` (a whole object as read from the API), `parse_spec` (only `.spec`),
`validate_update` (the transition rules). They raise `SpecError`, whose `violations` name fields the way the
API server does (``spec.roles.encode.autoscaling.minReplicas``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from triptych_contract import ROLES

from triptych_operator.api.base import DNS_LABEL_MAX, MAX_NAME_LENGTH, NAME_PATTERN, cel
from triptych_operator.api.cel_rules import failed_root_rules, failed_rules, failed_transition_rules
from triptych_operator.api.quantities import QUANTITY_PATTERN
from triptych_operator.api.spec import MultimodalDeploymentSpec


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


def validate_name(name: str) -> list[Violation]:
    """The CRD's root rules, on metadata.name (both are about it; the API server's message names it)."""
    failed = failed_root_rules(ROOT_RULES, {"metadata": {"name": name}}, "metadata.name")
    return [Violation(f.field, f.message) for f in failed]


def _schema_checks(spec: MultimodalDeploymentSpec, out: list[Violation]) -> None:
    """What the CRD's OpenAPI schema refuses and pydantic does not: a quantity's pattern (an int-or-string
    field), duplicates in a set list (`x-kubernetes-list-type: set`) and in a map list's keys (env names)."""
    _check_quantity("spec.encoderCache.capacity", spec.encoder_cache.capacity, out)
    if len(set(spec.modalities)) != len(spec.modalities):
        out.append(Violation("spec.modalities", "duplicate entries"))
    colocate = spec.topology.colocate if spec.topology is not None else None
    if colocate is not None and len(set(colocate.roles)) != len(colocate.roles):
        out.append(Violation("spec.topology.colocate.roles", "duplicate entries"))
    for role_name in ROLES:
        role = spec.role(role_name)
        if role is None:
            continue
        path = f"spec.roles.{role_name}"
        names = [e.name for e in role.env]
        for i, env in enumerate(role.env):
            if env.name in names[:i]:
                out.append(Violation(f"{path}.env[{i}]", f"duplicate name {env.name!r}"))
        if role.resources is not None:
            for kind in ("requests", "limits"):
                for key, value in getattr(role.resources, kind).items():
                    _check_quantity(f"{path}.resources.{kind}.{key}", value, out)


def validate_spec(spec: MultimodalDeploymentSpec) -> list[Violation]:
    """What the API server would refuse in a parsed spec: its schema's checks that pydantic cannot make,
    and every CEL rule of the CRD, evaluated from the same text (`cel_rules`); empty when valid."""
    out: list[Violation] = []
    _schema_checks(spec, out)
    out.extend(Violation(f.field, f.message) for f in failed_rules(spec, "spec"))
    return out


def validate_update(old: MultimodalDeploymentSpec, new: MultimodalDeploymentSpec) -> list[Violation]:
    """The CRD's transition rules (fields that cannot change in place), evaluated from their text."""
    return [Violation(f.field, f.message) for f in failed_transition_rules(old, new, "spec")]


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
