"""Kubernetes quantities (8Gi, 500m, 1e3): their grammar in the schema, and their value."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import WithJsonSchema

# A non-negative Kubernetes quantity (resource.Quantity's grammar without a sign).
QUANTITY_PATTERN = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"  # noqa: E501
_QUANTITY_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "pattern": QUANTITY_PATTERN,
    "x-kubernetes-int-or-string": True,
}
Quantity = Annotated[int | str, WithJsonSchema(_QUANTITY_SCHEMA)]


def parse_quantity(value: int | str) -> Decimal:
    """A Kubernetes quantity as a number (8Gi -> 8589934592). Raises ValueError on bad syntax."""
    text = str(value)
    if not re.fullmatch(QUANTITY_PATTERN, text):
        raise ValueError(f"not a quantity: {text!r}")
    suffixes: dict[str, int | Decimal] = {
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "Pi": 2**50,
        "Ei": 2**60,
        "n": Decimal("1e-9"),
        "u": Decimal("1e-6"),
        "m": Decimal("1e-3"),
        "k": 10**3,
        "M": 10**6,
        "G": 10**9,
        "T": 10**12,
        "P": 10**15,
        "E": 10**18,
    }
    for suffix, factor in suffixes.items():
        if text.endswith(suffix):
            return Decimal(text[: -len(suffix)]) * Decimal(factor)
    try:
        return Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the pattern already refuses these
        raise ValueError(f"not a quantity: {text!r}") from exc
