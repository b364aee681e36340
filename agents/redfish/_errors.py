"""Redfish messages from the standard registries, and the Redfish error object."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

_DATA = json.loads(resources.files("agents.redfish").joinpath("data/messages.json").read_text())
_REGISTRIES: dict[str, dict[str, Any]] = _DATA["Registries"]
MESSAGE_ODATA_TYPE = "#Message.v1_3_0.Message"


def message(key: str, *args: object, detail: str | None = None) -> dict[str, Any]:
    """Build a Message object for `Registry.Key` (for example `Base.ResourceNotFound`).

    `detail`, when given, is appended to the registry's message text and says what failed.
    """
    registry_name, _, message_key = key.partition(".")
    registry = _REGISTRIES[registry_name]
    entry = registry["Messages"][message_key]
    string_args = [str(arg) for arg in args]
    if len(string_args) != entry.get("NumberOfArgs", 0):
        raise ValueError(f"{key} takes {entry.get('NumberOfArgs', 0)} arguments, got {len(string_args)}")
    text = entry["Message"]
    for position in range(len(string_args), 0, -1):
        text = text.replace(f"%{position}", string_args[position - 1])
    if detail:
        text = f"{text} {detail}"
    major, minor, _patch = registry["Version"].split(".")
    body: dict[str, Any] = {
        "@odata.type": MESSAGE_ODATA_TYPE,
        "MessageId": f"{registry_name}.{major}.{minor}.{message_key}",
        "Message": text,
        "MessageSeverity": entry["MessageSeverity"],
        "Resolution": entry["Resolution"],
    }
    if string_args:
        body["MessageArgs"] = string_args
    return body


class RedfishError(Exception):
    """A request that fails with an HTTP status and one or more Base registry messages."""

    def __init__(self, status: int, key: str, *args: object, detail: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.messages = [message(key, *args, detail=detail)]
        self.headers = headers or {}
        super().__init__(f"{status} {self.messages[0]['MessageId']}: {self.messages[0]['Message']}")

    def add(self, key: str, *args: object) -> None:
        self.messages.append(message(key, *args))

    def body(self) -> dict[str, Any]:
        return error_body(self.messages)


def error_body(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Build the Redfish error response body (DSP0266 9.7) around its extended messages."""
    first = messages[0]
    if len(messages) > 1:
        code, text = message("Base.GeneralError")["MessageId"], message("Base.GeneralError")["Message"]
    else:
        code, text = first["MessageId"], first["Message"]
    return {"error": {"code": code, "message": text, "@Message.ExtendedInfo": messages}}
