"""What every model of the API shares: the base model, the CEL rule helper, names, limits and patterns.

Every field carries a description (it becomes `kubectl explain` text) and a camelCase alias (the Kubernetes
field name); Python code uses the snake_case names. Cross-field invariants are CEL rules attached to the
models through `json_schema_extra` (``x-kubernetes-validations``), so the API server refuses invalid objects.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from triptych_contract import ROLES

Role = Literal["frontend", "encode", "prefill", "decode"]
WorkerRoleName = Literal["encode", "prefill", "decode"]
Transport = Literal["auto", "rdma", "tcp"]
Mode = Literal["E/P/D", "E/PD", "EP/D", "EPD"]
WORKER_ROLES: tuple[WorkerRoleName, ...] = ("encode", "prefill", "decode")

# Every derived object is named `<name>-<role>` (naming.py) and Services, which must be DNS-1035 labels, are
# the tightest limit: 63 characters. The longest suffix is "-frontend" (9), so a name may have 54 characters.
DNS_LABEL_MAX = 63
MAX_NAME_LENGTH = DNS_LABEL_MAX - max(len(f"-{role}") for role in ROLES)
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_GPUS_PER_POD = 16
TENSOR_PARALLEL_SIZES = (1, 2, 4, 8, 16)
MAX_REPLICAS = 1000
MAX_NUM_SEQS = 4096  # requests one worker pod runs at once (roles.<role>.maxNumSeqs)
RESERVED_ENV_PREFIX = "TRIPTYCH_"

LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LABEL_KEY_PATTERN = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
RESOURCE_NAME_PATTERN = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# A PersistentVolumeClaim's name (a DNS-1123 subdomain).
ClaimName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]

DOMAIN_PATTERN = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def cel(
    rule: str, message: str, *, field_path: str | None = None, reason: str | None = None
) -> dict[str, str]:
    """One `x-kubernetes-validations` entry. `field_path` is relative to where the rule sits (".minReplicas")."""  # noqa: E501
    entry = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    if reason is not None:
        entry["reason"] = reason
    return entry


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


class ApiModel(BaseModel):
    """Base of every API model: camelCase field names on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )
