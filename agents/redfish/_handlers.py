"""Handlers for requests that change state: sessions, accounts, Reset and SimpleUpdate."""

from __future__ import annotations

import asyncio
import contextvars
import json
from urllib.parse import urlsplit

from aiohttp import web

from agents.redfish._auth import ROLE_PRIVILEGES, Principal, check_password_rules
from agents.redfish._backend import RESET_TYPES, BackendUnavailable
from agents.redfish._body import Field, read_json
from agents.redfish._errors import RedfishError
from agents.redfish._state import ServiceState
from agents.redfish._update import (
    INVENTORY_URI,
    TRANSFER_PROTOCOLS,
    SimpleUpdateRequest,
    run_simple_update,
)
from agents.redfish import _views

SESSION_FIELDS = {"UserName": Field("string", required=True),
                  "Password": Field("string", required=True)}
ACCOUNT_CREATE_FIELDS = {
    "UserName": Field("string", required=True),
    "Password": Field("string", required=True),
    "RoleId": Field("string", tuple(ROLE_PRIVILEGES), required=True),
    "Enabled": Field("boolean"),
}
ACCOUNT_PATCH_FIELDS = {
    "UserName": Field("string"),
    "Password": Field("string"),
    "RoleId": Field("string", tuple(ROLE_PRIVILEGES)),
    "Enabled": Field("boolean"),
    "Locked": Field("boolean"),
}
RESET_FIELDS = {"ResetType": Field("string", RESET_TYPES, required=True)}
SIMPLE_UPDATE_FIELDS = {
    "ImageURI": Field("string", required=True),
    "TransferProtocol": Field("string", TRANSFER_PROTOCOLS),
    "Targets": Field("string array"),
    "Username": Field("string"),
    "Password": Field("string"),
}


STATE_KEY = web.AppKey("redfish_state", ServiceState)
# The authenticated caller of the request being handled; each request runs in its own task.
CALLER: contextvars.ContextVar[Principal] = contextvars.ContextVar("redfish_caller")


class JsonResponse(web.Response):
    """A JSON response that keeps its body as a dict for the middleware's headers."""

    def __init__(self, body: dict, status: int, headers: dict[str, str] | None,
                 is_error: bool = False) -> None:
        super().__init__(text=json.dumps(body), status=status, headers=headers,
                         content_type="application/json")
        self.redfish_body = body
        self.is_error = is_error


def state_of(request: web.Request) -> ServiceState:
    return request.app[STATE_KEY]


def principal_of(request: web.Request) -> Principal:
    return CALLER.get()


def json_response(body: dict, status: int = 200, headers: dict[str, str] | None = None
                  ) -> JsonResponse:
    return JsonResponse(body, status, headers)


async def create_session(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await read_json(request, SESSION_FIELDS)
    account = state.auth.login(body["UserName"], body["Password"])
    if account is None:
        raise RedfishError(401, "Base.NoValidSession",
                           detail="Reason: invalid user name or password.")
    session = state.auth.open_session(account)
    resource = _views.session(state, session.session_id)
    return json_response(resource, 201, {"X-Auth-Token": session.token,
                                         "Location": resource["@odata.id"]})


async def delete_session(request: web.Request) -> web.Response:
    state = state_of(request)
    session_id = request.match_info["session_id"]
    session = state.auth.sessions.get(session_id)
    if session is None:
        raise _views.not_found("Session", session_id)
    caller = principal_of(request)
    if session.user_name != caller.user_name and not caller.has("ConfigureManager"):
        raise RedfishError(403, "Base.InsufficientPrivilege")
    del state.auth.sessions[session_id]
    return web.Response(status=204)


async def create_account(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await read_json(request, ACCOUNT_CREATE_FIELDS)
    account = state.auth.create_account(body["UserName"], body["Password"], body["RoleId"],
                                        body.get("Enabled", True))
    resource = _views.account(state, account.account_id)
    return json_response(resource, 201, {"Location": resource["@odata.id"]})


async def patch_account(request: web.Request) -> web.Response:
    state = state_of(request)
    account_id = request.match_info["account_id"]
    _views.account(state, account_id)  # 404 before reading the body
    body = await read_json(request, ACCOUNT_PATCH_FIELDS)
    # No await from the If-Match check to the last change, so that of concurrent PATCH
    # requests carrying the same ETag exactly one succeeds.
    current = _views.account(state, account_id)
    check_if_match(request, current["@odata.etag"])
    account = state.auth.accounts[account_id]
    caller = principal_of(request)
    own_password_only = set(body) <= {"Password"} and caller.user_name == account.user_name
    if not own_password_only and not caller.has("ConfigureUsers"):
        raise RedfishError(403, "Base.InsufficientPrivilege")
    if body.get("Locked") is True:
        raise RedfishError(400, "Base.PropertyValueNotInList", "true", "Locked",
                           detail="Only the service locks an account; a client may unlock it.")
    if "UserName" in body and body["UserName"] != account.user_name:
        if state.auth.find_account(body["UserName"]) is not None:
            raise RedfishError(409, "Base.ResourceAlreadyExists", "ManagerAccount", "UserName",
                               body["UserName"])
    if "Password" in body:
        check_password_rules(body["Password"])
        account.set_password(body["Password"])
    account.user_name = body.get("UserName", account.user_name)
    account.role_id = body.get("RoleId", account.role_id)
    account.enabled = body.get("Enabled", account.enabled)
    account.locked = body.get("Locked", account.locked)
    resource = _views.account(state, account_id)
    return json_response(resource, headers={"ETag": resource["@odata.etag"]})


async def delete_account(request: web.Request) -> web.Response:
    state = state_of(request)
    account_id = request.match_info["account_id"]
    if not principal_of(request).has("ConfigureUsers"):
        raise RedfishError(403, "Base.InsufficientPrivilege",
                           detail="Deleting an account needs the ConfigureUsers privilege.")
    account = state.auth.accounts.get(account_id)
    if account is None:
        raise _views.not_found("ManagerAccount", account_id)
    if account.user_name == principal_of(request).user_name:
        raise RedfishError(409, "Base.ResourceInUse",
                           detail="An account cannot delete itself.")
    del state.auth.accounts[account_id]
    for session in list(state.auth.sessions.values()):
        if session.user_name == account.user_name:
            del state.auth.sessions[session.session_id]
    return web.Response(status=204)


def check_if_match(request: web.Request, current_etag: str) -> None:
    """Raise 412 when If-Match names no current representation."""
    if_match = request.headers.get("If-Match")
    if if_match is None:
        return
    offered = {tag.strip().removeprefix("W/") for tag in if_match.split(",")}
    if "*" not in offered and current_etag not in offered:
        raise RedfishError(412, "Base.PreconditionFailed")


async def reset_system(request: web.Request) -> web.Response:
    state = state_of(request)
    system_id = request.match_info["system_id"]
    host = await state.backend.host_system()
    if system_id != host.system_id:
        await _views.system(state, system_id)  # 404 for an unknown id
        raise RedfishError(400, "Base.ActionNotSupported", "ComputerSystem.Reset",
                           detail=f"Reason: system {system_id} is a DPU without Reset here.")
    body = await read_json(request, RESET_FIELDS, action="ComputerSystem.Reset")
    await state.backend.reset_host(body["ResetType"])
    state.events.publish("ResourceEvent.ResourceChanged", origin=f"{_views.V1}/Systems/{system_id}")
    return web.Response(status=204)


async def simple_update(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await read_json(request, SIMPLE_UPDATE_FIELDS, action="UpdateService.SimpleUpdate")
    update = SimpleUpdateRequest(
        image_uri=_image_uri(body),
        targets=tuple(await _targets(state, body.get("Targets"))),
        username=body.get("Username"),
        password=body.get("Password"),
    )
    task = state.tasks.create("SimpleUpdate")
    job = asyncio.create_task(run_simple_update(task, state.tasks, state.backend, update,
                                                state.policy))
    state.background.add(job)
    job.add_done_callback(state.background.discard)
    return json_response(task.resource(), 202, {"Location": task.monitor_uri})


def _image_uri(body: dict) -> str:
    image_uri = body["ImageURI"]
    protocol = body.get("TransferProtocol")
    if protocol and "://" not in image_uri:
        image_uri = f"{protocol.lower()}://{image_uri}"
    parts = urlsplit(image_uri)
    if parts.scheme.upper() not in TRANSFER_PROTOCOLS or not parts.netloc:
        raise RedfishError(400, "Base.ActionParameterValueFormatError", image_uri, "ImageURI",
                           "UpdateService.SimpleUpdate",
                           detail="ImageURI is an http:// or https:// URI.")
    if protocol and parts.scheme.upper() != protocol:
        raise RedfishError(400, "Base.ActionParameterValueFormatError", image_uri, "ImageURI",
                           "UpdateService.SimpleUpdate",
                           detail=f"The URI scheme does not match TransferProtocol {protocol}.")
    return image_uri


async def _targets(state: ServiceState, targets: list[str] | None) -> list[str]:
    """Check Targets against the inventory; without Targets, pick the one updateable component.

    When the backend is unavailable the targets pass unchecked, and the task fails instead.
    """
    try:
        inventory = await state.backend.firmware_inventory()
    except BackendUnavailable:
        if targets:
            return targets
        raise
    updateable = [f"{INVENTORY_URI}/{c.component_id}" for c in inventory if c.updateable]
    if not targets:
        if len(updateable) != 1:
            raise RedfishError(400, "Base.ActionParameterMissing", "UpdateService.SimpleUpdate",
                               "Targets", detail=f"Choose among {updateable}.")
        return updateable
    for target in targets:
        if target.rstrip("/") not in updateable:
            raise RedfishError(400, "Base.ActionParameterValueNotInList", target, "Targets",
                               "UpdateService.SimpleUpdate")
    return [target.rstrip("/") for target in targets]


async def task_monitor(request: web.Request) -> web.Response:
    state = state_of(request)
    task_id = request.match_info["task_id"]
    task = state.tasks.get(task_id)
    if task is None:
        raise _views.not_found("TaskMonitor", task_id)
    if task.finished:
        return json_response(task.resource())
    return json_response(task.resource(), 202, {"Location": task.monitor_uri})
