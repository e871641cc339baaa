"""The protocol's base model and the mapping from pydantic's validation errors to client errors.

Requests are read leniently and reported honestly: a field we do not know is kept (``model_extra``), listed
by ``ignored_fields()`` with its full path, and logged once per request, so a client that relies on a feature
we do not implement can find out why it had no effect. Fields we do know are validated strictly, and a
failure becomes a 400 whose ``param`` names the field as the client wrote it (``messages[0].content[1]``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, ClassVar, Self, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from triptych_workers.errors import ClientError

logger = logging.getLogger(__name__)


class InvalidRequestError(ClientError):
    """The request body does not match the protocol: malformed JSON, a missing field or a wrong value."""

    code = "invalid_request"


class OpenAIBaseModel(BaseModel):
    """Base of every request-side model: unknown fields are accepted, kept and reported, never dropped."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    # True on the top-level request models: they log the ignored fields of the whole tree once.
    report_ignored_fields: ClassVar[bool] = False

    def ignored_fields(self) -> list[str]:
        """Paths of every field this model and the models inside it did not recognise, in input order."""
        paths: list[str] = []
        _collect_ignored(self, "", paths)
        return paths

    @model_validator(mode="after")
    def _log_ignored_fields(self) -> Self:
        if type(self).report_ignored_fields:
            ignored = self.ignored_fields()
            if ignored:
                logger.warning(
                    "%s: ignoring unknown fields: %s", type(self).__name__, ", ".join(ignored[:50])
                )
        return self


class ResponseModel(BaseModel):
    """Base of what we send: our own output, so an unknown field is our bug and is refused."""

    model_config = ConfigDict(extra="forbid")


def _join(prefix: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{prefix}[{name}]"
    return f"{prefix}.{name}" if prefix else name


def _collect_ignored(value: object, path: str, out: list[str]) -> None:
    if isinstance(value, OpenAIBaseModel):
        out.extend(_join(path, name) for name in value.model_extra or {})
        for name in type(value).model_fields:
            _collect_ignored(getattr(value, name), _join(path, name), out)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _collect_ignored(item, _join(path, index), out)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(item, BaseModel | list | tuple | Mapping):
                _collect_ignored(item, _join(path, str(key)), out)


def param_from_location(location: tuple[int | str, ...], data: object) -> str:
    """The client's path to the field an error is about.

    pydantic's locations also name union members (``str``, ``list[...]``) and discriminator values
    (``user``, ``image_url``); walking the input alongside keeps only the steps that exist in it.
    """
    param = ""
    current = data
    tag_skipped = False  # the discriminator value comes once per level; a second time it is a field name
    for step in location:
        if (
            not tag_skipped
            and isinstance(step, str)
            and isinstance(current, Mapping)
            and step in {current.get(key) for key in _DISCRIMINATORS}
        ):
            tag_skipped = True
            continue
        child = _child(current, step)
        if child is not _MISSING:
            param, current, tag_skipped = _join(param, step), child, False
        elif isinstance(step, int) or (step.isidentifier() and step not in _TYPE_NAMES):
            param = _join(param, step)  # a field the input lacks: the error is about it
    return param


_DISCRIMINATORS = ("type", "role")
_TYPE_NAMES = frozenset({"str", "list", "dict", "int", "float", "bool", "none"})
_MISSING = object()


def _child(current: object, step: int | str) -> object:
    if isinstance(step, int) and isinstance(current, list) and 0 <= step < len(current):
        return current[step]
    if isinstance(step, str) and isinstance(current, Mapping) and step in current:
        return current[step]
    return _MISSING


ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_request(model: type[ModelT], body: bytes | str | Mapping[str, Any]) -> ModelT:
    """Validate a body (raw JSON or already decoded) or raise ``InvalidRequestError`` naming ``param``."""
    try:
        if isinstance(body, bytes | str):
            return model.model_validate_json(body)
        return model.model_validate(body)
    except ValidationError as exc:
        raise _client_error(exc, body) from exc


def _client_error(exc: ValidationError, body: bytes | str | Mapping[str, Any]) -> InvalidRequestError:
    errors = exc.errors(include_url=False, include_input=False)
    if not errors:  # pragma: no cover - pydantic always reports at least one
        return InvalidRequestError("invalid request body")
    # For a union (``str | list[part]``) pydantic reports one error per member; the deepest is the one that
    # names the actual mistake (``content[1].image_url.url``), not "content is not a string".
    first = max(errors, key=lambda e: len(e["loc"]))
    if first["type"] == "json_invalid":
        return InvalidRequestError(f"request body is not valid JSON: {first['msg']}")
    data: object = body
    if isinstance(body, bytes | str):
        try:
            data = json.loads(body)
        except ValueError:
            data = None
    param = param_from_location(tuple(first["loc"]), data)
    ctx = first.get("ctx") or {}
    if first["type"] in ("union_tag_invalid", "union_tag_not_found") and "discriminator" in ctx:
        param = _join(param, str(ctx["discriminator"]).strip("'\""))
    message = f"{param}: {first['msg']}" if param else first["msg"]
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return InvalidRequestError(message, param=param or None)
