"""The BMC agent process: a Redfish service on its own port for every host.

Power actions go to the host agent over the bus; DPU state comes from the DPU
agent.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from pathlib import Path
from typing import Any

from aiohttp import web

import proto
from proto import subjects

from .._agent import Agent, CommandFailed, CommandTimeout
from .._config import ClusterConfig, HostConfig

RESET_TYPES = ["On", "ForceOff", "GracefulShutdown", "ForceRestart"]
MAX_BODY_BYTES = 64 * 1024


def redfish_error(status: int, message_id: str, message: str) -> web.Response:
    body = {
        "error": {
            "code": f"Base.1.22.{message_id}",
            "message": message,
            "@Message.ExtendedInfo": [
                {
                    "@odata.type": "#Message.v1_1_1.Message",
                    "MessageId": f"Base.1.22.{message_id}",
                    "Message": message,
                    "Severity": "Critical" if status >= 500 else "Warning",
                }
            ],
        }
    }
    return web.json_response(body, status=status, headers={"OData-Version": "4.0"})


class BmcAgent(Agent):
    kind = "bmc"

    def __init__(self, config: ClusterConfig, agent_id: str = "bmc") -> None:
        super().__init__(config, agent_id)
        self.password = Path(config.bmc_password_file()).read_text().strip()
        self.runners: list[web.AppRunner] = []

    async def start(self) -> None:
        for host in self.config.hosts:
            runner = web.AppRunner(self._app(host), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", host.bmc_port).start()
            self.runners.append(runner)
            self.log.info("bmc.listening", host=host.id, port=host.bmc_port)

    async def stop(self) -> None:
        for runner in self.runners:
            await runner.cleanup()

    def _app(self, host: HostConfig) -> web.Application:
        app = web.Application(middlewares=[self._auth_middleware], client_max_size=MAX_BODY_BYTES)
        app["host"] = host
        app.router.add_get("/redfish", self.versions)
        app.router.add_get("/redfish/v1/", self.service_root)
        app.router.add_get("/redfish/v1/Systems", self.systems)
        app.router.add_get("/redfish/v1/Systems/{system}", self.system)
        app.router.add_post("/redfish/v1/Systems/{system}/Actions/ComputerSystem.Reset", self.reset)
        return app

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path not in ("/redfish", "/redfish/v1/", "/redfish/v1") and not self._authorized(request):
            response = redfish_error(401, "NoValidSession", "Valid credentials are required (HTTP Basic).")
            response.headers["WWW-Authenticate"] = 'Basic realm="dcfleet BMC"'
            return response
        try:
            return await handler(request)
        except web.HTTPMethodNotAllowed as exc:
            response = redfish_error(405, "OperationNotAllowed", f"{request.method} is not allowed on {request.path}.")
            response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
            return response
        except web.HTTPNotFound:
            return redfish_error(404, "ResourceMissingAtURI", f"The resource at {request.path} was not found.")
        except web.HTTPRequestEntityTooLarge:
            return redfish_error(413, "PayloadTooLarge", f"Request bodies are limited to {MAX_BODY_BYTES} bytes.")

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user, self.config.bmc_username) and hmac.compare_digest(password, self.password)

    # ---- resources ------------------------------------------------------------

    async def versions(self, _request: web.Request) -> web.Response:
        return web.json_response({"v1": "/redfish/v1/"})

    async def service_root(self, request: web.Request) -> web.Response:
        host: HostConfig = request.app["host"]
        return web.json_response({
            "@odata.id": "/redfish/v1/",
            "@odata.type": "#ServiceRoot.v1_17_0.ServiceRoot",
            "Id": "RootService",
            "Name": f"dcfleet BMC of {host.id}",
            "RedfishVersion": "1.21.0",
            "Systems": {"@odata.id": "/redfish/v1/Systems"},
        })

    async def systems(self, request: web.Request) -> web.Response:
        host: HostConfig = request.app["host"]
        members = [{"@odata.id": f"/redfish/v1/Systems/{sid}"} for sid in (host.id, f"{host.id}-dpu")]
        return web.json_response({
            "@odata.id": "/redfish/v1/Systems",
            "@odata.type": "#ComputerSystemCollection.ComputerSystemCollection",
            "Name": "Computer System Collection",
            "Members": members,
            "Members@odata.count": len(members),
        })

    async def system(self, request: web.Request) -> web.Response:
        host: HostConfig = request.app["host"]
        system_id = request.match_info["system"]
        if system_id == host.id:
            return web.json_response(await self._host_system(host))
        if system_id == f"{host.id}-dpu":
            return web.json_response(await self._dpu_system(host, system_id))
        return redfish_error(404, "ResourceMissingAtURI", f"The resource at {request.path} was not found.")

    async def _host_system(self, host: HostConfig) -> dict[str, Any]:
        try:
            status = await self.request(subjects.host_command(host.id, "status"), proto.HostStatusRequest(), 2.0)
            power_state, health = status["power_state"], "OK" if status["booted"] or status["power_state"] == "Off" else "Critical"
        except (CommandFailed, CommandTimeout):
            power_state, health = None, "Critical"
        return {
            "@odata.id": f"/redfish/v1/Systems/{host.id}",
            "@odata.type": "#ComputerSystem.v1_22_0.ComputerSystem",
            "Id": host.id,
            "Name": f"Host {host.id}",
            "SystemType": "Physical",
            "Model": host.model,
            "PowerState": power_state,
            "Status": {"State": "Enabled", "Health": health},
            "ProcessorSummary": {"Count": host.cores},
            "Actions": {
                "#ComputerSystem.Reset": {
                    "target": f"/redfish/v1/Systems/{host.id}/Actions/ComputerSystem.Reset",
                    "ResetType@Redfish.AllowableValues": RESET_TYPES,
                }
            },
        }

    async def _dpu_system(self, host: HostConfig, dpu_id: str) -> dict[str, Any]:
        try:
            status = await self.request(subjects.dpu_command(dpu_id, "status"), proto.DpuStatusRequest(dpu_id), 2.0)
            state, version = status["state"], status["os_version"]
        except (CommandFailed, CommandTimeout):
            state, version = "Unknown", None
        return {
            "@odata.id": f"/redfish/v1/Systems/{dpu_id}",
            "@odata.type": "#ComputerSystem.v1_22_0.ComputerSystem",
            "Id": dpu_id,
            "Name": f"DPU of {host.id}",
            "SystemType": "DPU",
            "BiosVersion": version,
            "Status": {"State": "Enabled" if state == "Running" else "StandbyOffline", "Health": "OK"},
        }

    async def reset(self, request: web.Request) -> web.Response:
        host: HostConfig = request.app["host"]
        if request.match_info["system"] != host.id:
            return redfish_error(404, "ResourceMissingAtURI", f"The resource at {request.path} was not found.")
        try:
            body = json.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return redfish_error(400, "MalformedJSON", "The request body is not valid JSON.")
        if not isinstance(body, dict):
            return redfish_error(400, "MalformedJSON", "The request body must be a JSON object.")
        unknown = sorted(set(body) - {"ResetType"})
        if unknown:
            return redfish_error(400, "ActionParameterUnknown", f"Unknown parameter {unknown[0]} for ComputerSystem.Reset.")
        reset_type = body.get("ResetType")
        if reset_type is None:
            return redfish_error(400, "ActionParameterMissing", "ComputerSystem.Reset requires the parameter ResetType.")
        if reset_type not in RESET_TYPES:
            return redfish_error(
                400, "ActionParameterValueNotInList",
                f"The value {reset_type!r} for ResetType is not one of {', '.join(RESET_TYPES)}.",
            )
        try:
            await self.request(
                subjects.host_command(host.id, "power"), proto.HostPower(action=reset_type, via="redfish"), 10.0
            )
        except CommandFailed as exc:
            return redfish_error(409, "ActionNotSupported", f"ComputerSystem.Reset {reset_type} failed: {exc.error}")
        except CommandTimeout:
            return redfish_error(503, "ServiceTemporarilyUnavailable", f"Host {host.id} did not respond.")
        self.log.info("bmc.reset", host=host.id, reset_type=reset_type)
        return web.Response(status=204, headers={"OData-Version": "4.0"})
