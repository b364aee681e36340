"""Read and validate JSON request bodies, raising Redfish errors for every kind of bad input."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from agents.redfish._errors import RedfishError

MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class Field:
    """One accepted property: its JSON type ("string", "boolean" or "string array"), and
    the allowed values when it is an enumeration."""

    kind: str
    allowed: tuple[str, ...] | None = None
    required: bool = False


def _type_matches(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "string array":
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    raise ValueError(f"unknown field kind {kind!r}")


async def read_json(request: web.Request, fields: dict[str, Field],
                    action: str | None = None) -> dict[str, Any]:
    """Return the validated body; `action` names the action for action-parameter messages."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise RedfishError(413, "Base.PayloadTooLarge",
                           detail=f"The limit is {MAX_BODY_BYTES} bytes.")
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise RedfishError(413, "Base.PayloadTooLarge",
                           detail=f"The limit is {MAX_BODY_BYTES} bytes.")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RedfishError(400, "Base.MalformedJSON", detail=f"Reason: {exc}.") from exc
    if not isinstance(body, dict):
        raise RedfishError(400, "Base.MalformedJSON",
                           detail=f"Reason: the body is a JSON {type(body).__name__}, not an object.")
    check_fields(body, fields, action)
    return {name: value for name, value in body.items() if not name.startswith("@")}


def check_fields(body: dict[str, Any], fields: dict[str, Field], action: str | None) -> None:
    for name, value in body.items():
        if name.startswith("@"):
            continue
        spec = fields.get(name)
        if spec is None:
            raise (RedfishError(400, "Base.ActionParameterUnknown", action, name) if action
                   else RedfishError(400, "Base.PropertyUnknown", name))
        if not _type_matches(spec.kind, value):
            shown = json.dumps(value)
            raise (RedfishError(400, "Base.ActionParameterValueTypeError", shown, name, action)
                   if action else RedfishError(400, "Base.PropertyValueTypeError", shown, name))
        if spec.allowed is not None and value not in spec.allowed:
            raise (RedfishError(400, "Base.ActionParameterValueNotInList", value, name, action)
                   if action else RedfishError(400, "Base.PropertyValueNotInList", value, name))
    for name, spec in fields.items():
        if spec.required and name not in body:
            raise (RedfishError(400, "Base.ActionParameterMissing", action, name) if action
                   else RedfishError(400, "Base.PropertyMissing", name))
