"""The BMC agent process: a Redfish service (agents.redfish) over HTTPS on its own port for every host.

Each service's backend reaches the host agent and the DPU agent over the bus
(agents.bmc._backend). The process must run with AIOHTTP_NO_EXTENSIONS=1 (`dcfleet up` sets
it when it spawns this agent): aiohttp's C HTTP parser returns 400 to an unknown method before
the application sees it, where Redfish requires 405 or 501.
"""

from __future__ import annotations

import os
from typing import Any

from aiohttp import http_parser, web

import proto
from agents import redfish

from .. import _bus
from .._agent import Agent, HandlerError
from .._capsule_keys import load_trusted_cert
from .._config import ClusterConfig, ConfigError, HostConfig
from ..chaos._bmc_faults import BMC_FAULT_SUBJECT, BmcFaultRejected, BmcFaults
from ._backend import BusBackend
from ._material import credentials

DEFAULT_DOWNLOAD_TIMEOUT_S = 30.0
# Overrides the SimpleUpdate download timeout, in seconds (tests shorten it).
DOWNLOAD_TIMEOUT_ENV = "DCFLEET_BMC_DOWNLOAD_TIMEOUT_S"


def download_timeout_s() -> float:
    text = os.environ.get(DOWNLOAD_TIMEOUT_ENV)
    if not text:
        return DEFAULT_DOWNLOAD_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ConfigError(f"invalid {DOWNLOAD_TIMEOUT_ENV}={text!r}: expected a positive number of seconds")
    return value


class BmcAgent(Agent):
    kind = "bmc"

    def __init__(self, config: ClusterConfig, agent_id: str = "bmc") -> None:
        super().__init__(config, agent_id)
        self.credentials = credentials(config)
        self.trusted_cert = load_trusted_cert(config.state_dir)
        self.tls = _bus.redfish_server_ssl(config)
        self.download_ssl = _bus.redfish_client_ssl(config)
        self.download_timeout_s = download_timeout_s()
        self.services: list[redfish.RunningService] = []
        self.faults = BmcFaults([h.id for h in config.hosts])

    async def start(self) -> None:
        if http_parser.HttpRequestParser is not http_parser.HttpRequestParserPy:
            self.log.warning("bmc.c_http_parser", detail="AIOHTTP_NO_EXTENSIONS is not set: unknown HTTP "
                             "methods get 400 instead of 405")
        await self.serve(BMC_FAULT_SUBJECT, {proto.BmcFault: self.on_fault})
        address = self.config.bmc_address()
        for host in self.config.hosts:
            service = await redfish.serve(self._app(host), address, host.bmc_port, ssl_context=self.tls)
            self.services.append(service)
            self.log.info("bmc.listening", host=host.id, url=f"https://{address}:{service.port}")

    async def on_fault(self, message: proto.BmcFault, _msg: Any) -> dict[str, Any]:
        try:
            self.faults.set(message.host, message.mode, message.delay_s)
        except BmcFaultRejected as exc:
            raise HandlerError(str(exc)) from None
        self.log.info("bmc.fault", host=message.host, mode=message.mode, delay_s=message.delay_s)
        return {"host": message.host, "mode": message.mode}

    async def stop(self) -> None:
        for service in self.services:
            await service.close()

    def _app(self, host: HostConfig) -> web.Application:
        app = redfish.create_app(
            BusBackend(self, host, self.config.state_dir), credentials=self.credentials,
            trusted_capsule_cert=self.trusted_cert, download_timeout_s=self.download_timeout_s,
            download_ssl=self.download_ssl, manager_id="BMC",
        )
        # Outermost, so an injected fault applies before authentication, as a failing BMC would.
        app.middlewares.insert(0, self._fault_middleware(host.id))
        return app

    def _fault_middleware(self, host_id: str) -> Any:
        def injected_error() -> web.Response:
            body = redfish.error_body([redfish.message("Base.InternalError",
                                                       detail="The BMC failed (injected fault).")])
            return web.json_response(body, status=500, headers={"OData-Version": "4.0"})

        @web.middleware
        async def fault_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
            injected = await self.faults.before_request(host_id, injected_error)
            if injected is not None:
                return injected
            return await handler(request)

        return fault_middleware
