"""The CRD's own CEL rules, evaluated in Python: the same rule text the API server runs, read from the
models' JSON schema (where `hack/gen-crd` reads it too), so a spec that slipped past the API server (an
older CRD, a direct etcd write) is refused naming the same field with the same message.

The evaluator is `common-expression-language` (Python bindings of a Rust CEL; import name `cel`). Kubernetes
adds libraries to CEL; the rules here use three of their functions, which the evaluator lacks and this
module supplies: `split` (the strings extension) and `isCIDR`, `cidr(...).masked()` (the network library; a
CIDR is carried as its text, and `masked()` gives its network's canonical text). Everything else the rules
use (`has`, `all`, `exists`, `filter`, `size`, `in`, `matches`, `startsWith`, arithmetic, `oldSelf`) is
standard CEL.

`self` is what the API server would see after defaulting: the parsed model dumped with its defaults and
without absent fields (`exclude_none`), since the CRD's defaults are the models' own. A rule that names
`oldSelf` is a transition rule: it runs only on an update, where the old object has a value there too.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import cel
from pydantic import BaseModel


@dataclass(frozen=True)
class Failed:
    """A rule that does not hold: where (the field the API server names) and the rule's message."""

    field: str
    message: str


def _split(text: str, separator: str) -> list[str]:
    return str(text).split(str(separator))


def _is_cidr(text: str) -> bool:
    try:
        ipaddress.ip_network(str(text), strict=False)
    except ValueError:
        return False
    return True


def _cidr(text: str) -> str:
    return str(text)


def _masked(cidr: str) -> str:
    return str(ipaddress.ip_network(str(cidr), strict=False))


KUBERNETES_FUNCTIONS: Mapping[str, Any] = {
    "split": _split,
    "isCIDR": _is_cidr,
    "cidr": _cidr,
    "masked": _masked,
}


@functools.cache
def _program(rule: str) -> cel.Program:
    """Each rule compiled once per process."""
    return cel.compile(rule)


def _holds(rule: str, context: cel.Context) -> bool:
    """An evaluation error counts as not holding: the API server refuses an object whose rule errs."""
    try:
        return _program(rule).execute(context) is True
    except (RuntimeError, TypeError, ValueError):
        return False


@functools.cache
def _schema(model: type[BaseModel]) -> tuple[dict[str, Any], dict[str, Any]]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return raw, raw.get("$defs", {})


def _resolved(node: Mapping[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    """A schema node with its `$ref` inlined and an Optional's `anyOf [X, null]` folded into X (as
    `hack/gen-crd` writes them), so that its rules, properties and items are in one place."""
    out = dict(node)
    ref = out.pop("$ref", None)
    if ref is not None:
        out = {**_resolved(defs[ref.rsplit("/", 1)[-1]], defs), **out}
    branches = [b for b in out.get("anyOf", []) if b != {"type": "null"}]
    if len(branches) == 1 and not out.get("x-kubernetes-int-or-string"):
        del out["anyOf"]
        inner = _resolved(branches[0], defs)
        rules = [*inner.pop("x-kubernetes-validations", []), *out.get("x-kubernetes-validations", [])]
        out = {**inner, **out, "x-kubernetes-validations": rules}
    return out


def _walk(
    node: Mapping[str, Any], defs: Mapping[str, Any], path: str, value: Any, old: Any, *, update: bool
) -> Iterator[Failed]:
    """The rules under `node` that `value` breaks: on an `update`, the transition rules where `old` has a
    value too; else the others. One evaluation context per node, shared by its rules."""
    node = _resolved(node, defs)
    rules = [r for r in node.get("x-kubernetes-validations", []) if ("oldSelf" in r["rule"]) == update]
    if rules and not (update and old is None):
        variables = {"self": value, "oldSelf": old} if update else {"self": value}
        context = cel.Context(variables=variables, functions=dict(KUBERNETES_FUNCTIONS))
        for rule in rules:
            if not _holds(rule["rule"], context):
                yield Failed(path + rule.get("fieldPath", ""), rule["message"])
    if isinstance(value, Mapping):
        for name, sub in (node.get("properties") or {}).items():
            if name in value:
                sub_old = old.get(name) if isinstance(old, Mapping) else None
                yield from _walk(sub, defs, f"{path}.{name}", value[name], sub_old, update=update)
    elif isinstance(value, list) and isinstance(node.get("items"), Mapping):
        for i, item in enumerate(value):
            # Kubernetes pairs list items with old ones only in map lists; no item rule here looks back.
            yield from _walk(node["items"], defs, f"{path}[{i}]", item, None, update=update)


def _dump(model: BaseModel) -> Any:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def failed_rules(model: BaseModel, path: str) -> list[Failed]:
    """Every CEL rule of `model`'s schema (transition rules aside) that its value breaks; `path` is where
    the value sits in the object (`spec`)."""
    raw, defs = _schema(type(model))
    return list(_walk(raw, defs, path, _dump(model), None, update=False))


def failed_transition_rules(old: BaseModel, new: BaseModel, path: str) -> list[Failed]:
    """The transition rules (those naming `oldSelf`) that an update from `old` to `new` breaks."""
    raw, defs = _schema(type(new))
    return list(_walk(raw, defs, path, _dump(new), _dump(old), update=True))


def failed_root_rules(rules: list[dict[str, str]], obj: Mapping[str, Any], field: str) -> list[Failed]:
    """The object-level rules (on `self` = the whole object) that `obj` breaks, named as `field` (the API
    server reports a root rule at the root; ours all concern one field, and its message names it)."""
    context = cel.Context(variables={"self": dict(obj)}, functions=dict(KUBERNETES_FUNCTIONS))
    return [Failed(field, r["message"]) for r in rules if not _holds(r["rule"], context)]


__all__ = ["KUBERNETES_FUNCTIONS", "Failed", "failed_root_rules", "failed_rules", "failed_transition_rules"]
