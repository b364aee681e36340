"""The aiohttp application: routes, the Redfish protocol middleware, and a server helper."""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import structlog
from aiohttp import web
from cryptography import x509

from agents import capsule
from agents.redfish import _handlers, _views
from agents.redfish._auth import AuthStore, etag_of
from agents.redfish._backend import BackendUnavailable, RedfishBackend
from agents.redfish._body import MAX_BODY_BYTES
from agents.redfish._errors import RedfishError
from agents.redfish._events import stream_events
from agents.redfish._metadata import SCHEMA_BASE_URI, metadata_xml, service_document
from agents.redfish._state import ServiceState
from agents.redfish._update import UpdatePolicy

log = structlog.get_logger("agents.redfish")
V1 = "/redfish/v1"
SLASH = "{_slash:/?}"

# Route name -> privilege its non-GET methods need; GET and HEAD need Login.
_PUBLIC_ROUTES = {"redfish", "root", "odata", "metadata", "sessions_members"}
_WRITE_PRIVILEGES = {
    "sessions": "Login",
    "session": "Login",
    "accounts": "ConfigureUsers",
    "accounts_members": "ConfigureUsers",
    # PATCH of one's own password needs only ConfigureSelf; the handlers check the rest.
    "account": "ConfigureSelf",
    "reset": "ConfigureComponents",
    "simple_update": "ConfigureComponents",
}

View = Callable[..., Any]


def _view_handler(view: View) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Wrap a view (sync or async, taking the state and the URI's ids) as a GET handler."""

    async def handle(request: web.Request) -> web.Response:
        ids = {k: v for k, v in request.match_info.items() if not k.startswith("_")}
        body = view(_handlers.state_of(request), **ids)
        if asyncio.iscoroutine(body):
            body = await body
        return _handlers.json_response(body)

    return handle


async def _redfish_version(request: web.Request) -> web.Response:
    return _handlers.json_response({"v1": f"{V1}/"})


async def _odata(request: web.Request) -> web.Response:
    return _handlers.json_response(service_document())


async def _metadata(request: web.Request) -> web.Response:
    return web.Response(text=metadata_xml(), content_type="application/xml")


async def _sse(request: web.Request) -> web.StreamResponse:
    return await stream_events(request, _handlers.state_of(request).events)


def _add_routes(app: web.Application) -> None:
    r = app.router
    get = {
        "redfish": ("/redfish" + SLASH, _redfish_version),
        "root": (V1 + SLASH, _view_handler(_views.service_root)),
        "odata": (f"{V1}/odata" + SLASH, _odata),
        "metadata": (f"{V1}/$metadata", _metadata),
        "systems": (f"{V1}/Systems" + SLASH, _view_handler(_views.systems)),
        "system": (f"{V1}/Systems/{{system_id}}" + SLASH, _view_handler(_views.system)),
        "chassis_all": (f"{V1}/Chassis" + SLASH, _view_handler(_views.chassis_collection)),
        "chassis": (f"{V1}/Chassis/{{chassis_id}}" + SLASH, _view_handler(_views.chassis)),
        "managers": (f"{V1}/Managers" + SLASH, _view_handler(_views.managers)),
        "manager": (f"{V1}/Managers/{{manager_id}}" + SLASH, _view_handler(_views.manager)),
        "session_service": (f"{V1}/SessionService" + SLASH, _view_handler(_views.session_service)),
        "sessions": (f"{V1}/SessionService/Sessions" + SLASH, _view_handler(_views.sessions)),
        "session": (f"{V1}/SessionService/Sessions/{{session_id}}" + SLASH,
                    _view_handler(_views.session)),
        "account_service": (f"{V1}/AccountService" + SLASH, _view_handler(_views.account_service)),
        "accounts": (f"{V1}/AccountService/Accounts" + SLASH, _view_handler(_views.accounts)),
        "account": (f"{V1}/AccountService/Accounts/{{account_id}}" + SLASH,
                    _view_handler(_views.account)),
        "roles": (f"{V1}/AccountService/Roles" + SLASH, _view_handler(_views.roles)),
        "role": (f"{V1}/AccountService/Roles/{{role_id}}" + SLASH, _view_handler(_views.role)),
        "update_service": (f"{V1}/UpdateService" + SLASH, _view_handler(_views.update_service)),
        "inventory": (f"{V1}/UpdateService/FirmwareInventory" + SLASH,
                      _view_handler(_views.firmware_inventory)),
        "component": (f"{V1}/UpdateService/FirmwareInventory/{{component_id}}" + SLASH,
                      _view_handler(_views.firmware_component)),
        "task_service": (f"{V1}/TaskService" + SLASH, _view_handler(_views.task_service)),
        "tasks": (f"{V1}/TaskService/Tasks" + SLASH, _view_handler(_views.tasks)),
        "task": (f"{V1}/TaskService/Tasks/{{task_id}}" + SLASH, _view_handler(_views.task)),
        "task_monitor": (f"{V1}/TaskService/TaskMonitors/{{task_id}}" + SLASH,
                         _handlers.task_monitor),
        "event_service": (f"{V1}/EventService" + SLASH, _view_handler(_views.event_service)),
        "sse": (f"{V1}/EventService/SSE" + SLASH, _sse),
    }

    resources = {}
    for name, (path, handler) in get.items():
        resources[name] = r.add_resource(path, name=name)
        resources[name].add_route("GET", handler)

    resources["sessions"].add_route("POST", _handlers.create_session)
    # DSP0266 lets clients POST to a collection's Members property to create a member.
    r.add_route("POST", f"{V1}/SessionService/Sessions/Members", _handlers.create_session,
                name="sessions_members")
    r.add_route("POST", f"{V1}/AccountService/Accounts/Members", _handlers.create_account,
                name="accounts_members")
    resources["session"].add_route("DELETE", _handlers.delete_session)
    resources["accounts"].add_route("POST", _handlers.create_account)
    resources["account"].add_route("PATCH", _handlers.patch_account)
    resources["account"].add_route("DELETE", _handlers.delete_account)
    r.add_route("POST", f"{V1}/Systems/{{system_id}}/Actions/ComputerSystem.Reset",
                _handlers.reset_system, name="reset")
    r.add_route("POST", f"{V1}/UpdateService/Actions/UpdateService.SimpleUpdate",
                _handlers.simple_update, name="simple_update")


def _route_name(request: web.Request) -> str | None:
    route = request.match_info.route
    return route.resource.name if route.resource is not None else None


def _check_protocol_headers(request: web.Request) -> None:
    odata_version = request.headers.get("OData-Version")
    if odata_version is not None and odata_version.strip() != "4.0":
        raise RedfishError(412, "Base.HeaderInvalid", f"OData-Version: {odata_version}",
                           detail="This service supports OData-Version 4.0.")
    unsupported = [key for key in request.query if key.startswith("$")]
    if unsupported:
        raise RedfishError(501, "Base.QueryNotSupported",
                           detail=f"Unsupported query parameters: {', '.join(unsupported)}.")


def _authorize(request: web.Request, state: ServiceState) -> None:
    name = _route_name(request)
    if name in _PUBLIC_ROUTES or (name == "sessions" and request.method == "POST"):
        return
    principal = state.auth.authenticate(request.headers)
    _handlers.CALLER.set(principal)
    if request.method in ("GET", "HEAD") or name is None:
        needed = "Login"
    else:
        needed = _WRITE_PRIVILEGES.get(name, "ConfigureManager")
    if not principal.has(needed):
        raise RedfishError(403, "Base.InsufficientPrivilege",
                           detail=f"The request needs the {needed} privilege.")


@web.middleware
async def redfish_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Apply the Redfish protocol: headers, authentication, privileges and error bodies."""
    state = _handlers.state_of(request)
    try:
        _check_protocol_headers(request)
        _authorize(request, state)
        response = await handler(request)
        response = _not_modified(request, response)
    except RedfishError as exc:
        response = _error_response(exc)
    except web.HTTPMethodNotAllowed as exc:
        methods = set(exc.allowed_methods)
        if "GET" in methods:
            methods.add("HEAD")
        allowed = ", ".join(sorted(methods))
        response = _error_response(RedfishError(
            405, "Base.OperationNotAllowed", headers={"Allow": allowed},
            detail=f"Method {request.method} is not allowed on {request.path}; allowed: {allowed}.",
        ))
    except web.HTTPNotFound:
        response = _error_response(RedfishError(404, "Base.ResourceNotFound", "Resource",
                                                request.path))
    except web.HTTPRequestEntityTooLarge:
        response = _error_response(RedfishError(413, "Base.PayloadTooLarge"))
    except BackendUnavailable as exc:
        log.info("backend.unavailable", component=exc.component, reason=exc.reason,
                 path=request.path)
        response = _error_response(RedfishError(
            503, "Base.ServiceTemporarilyUnavailable", 5, headers={"Retry-After": "5"},
            detail=f"Reason: {exc}."))
    if not response.prepared:
        _add_headers(request, response)
    return response


def _not_modified(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Return 304 Not Modified for a GET whose If-None-Match names the current ETag."""
    if_none_match = request.headers.get("If-None-Match")
    if (request.method not in ("GET", "HEAD") or not if_none_match
            or not isinstance(response, _handlers.JsonResponse)):
        return response
    body = response.redfish_body
    etag = body.get("@odata.etag") or etag_of(body)
    offered = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    if etag in offered or "*" in offered:
        return web.Response(status=304, headers={"ETag": etag})
    return response


def _error_response(exc: RedfishError) -> web.Response:
    return _handlers.JsonResponse(exc.body(), exc.status, exc.headers, is_error=True)


def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["OData-Version"] = "4.0"
    response.headers.setdefault("Cache-Control", "no-cache")
    route = request.match_info.route
    if "Allow" not in response.headers and route.resource is not None:
        methods = {r.method for r in route.resource}
        if "GET" in methods:
            methods.add("HEAD")
        response.headers["Allow"] = ", ".join(sorted(methods))
    if not isinstance(response, _handlers.JsonResponse) or response.is_error:
        return
    body = response.redfish_body
    odata_type = body.get("@odata.type", "")
    if odata_type:
        response.headers["Link"] = f"<{SCHEMA_BASE_URI}/{_schema_name(odata_type)}.json>; rel=describedby"
    if request.method in ("GET", "HEAD") and response.status == 200 and "@odata.id" in body:
        response.headers.setdefault("ETag", body.get("@odata.etag") or etag_of(body))


def _schema_name(odata_type: str) -> str:
    """Return the JSON schema file stem of an @odata.type: ComputerSystem.v1_27_0 for
    #ComputerSystem.v1_27_0.ComputerSystem, or the namespace alone for a collection."""
    parts = odata_type.lstrip("#").split(".")
    return ".".join(parts[:-1])


def create_app(
    backend: RedfishBackend,
    *,
    credentials: dict[str, tuple[str, str]],
    trusted_capsule_cert: x509.Certificate,
    image_type_id: uuid.UUID = capsule.DPU_MGMT_OS_IMAGE_TYPE_ID,
    download_timeout_s: float = 30.0,
    max_image_bytes: int = 256 * 1024 * 1024,
    download_ssl: ssl.SSLContext | None = None,
    manager_id: str = "BMC",
    session_timeout_s: int = 1800,
) -> web.Application:
    """Build a Redfish service over `backend`.

    `credentials` maps each user name to (password, role id), the role being Administrator,
    Operator or ReadOnly. `trusted_capsule_cert` verifies SimpleUpdate capsules, directly or as
    the issuer of their signer. `download_ssl` verifies HTTPS image servers (None: system CAs).
    """
    auth = AuthStore.from_credentials(credentials)
    auth.session_timeout_s = session_timeout_s
    policy = UpdatePolicy(trusted_capsule_cert, image_type_id, download_timeout_s,
                          max_image_bytes, download_ssl)
    state = ServiceState(backend=backend, auth=auth, policy=policy, manager_id=manager_id)
    app = web.Application(middlewares=[redfish_middleware], client_max_size=MAX_BODY_BYTES)
    app[_handlers.STATE_KEY] = state
    _add_routes(app)
    app.on_shutdown.append(_close_streams)
    app.on_cleanup.append(_stop_background)
    return app


async def _close_streams(app: web.Application) -> None:
    app[_handlers.STATE_KEY].events.close()


async def _stop_background(app: web.Application) -> None:
    jobs = list(app[_handlers.STATE_KEY].background)
    for job in jobs:
        job.cancel()
    await asyncio.gather(*jobs, return_exceptions=True)


@dataclass
class RunningService:
    """A Redfish application listening on a TCP port."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()

    async def __aenter__(self) -> RunningService:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def serve(app: web.Application, host: str = "127.0.0.1", port: int = 0,
                ssl_context: ssl.SSLContext | None = None) -> RunningService:
    """Start `app` on host:port (port 0 picks a free one) and return once it accepts connections."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    log.info("redfish.started", host=host, port=bound_port)
    return RunningService(runner, host, bound_port)
