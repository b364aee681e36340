"""The host's DPU management OS installer, a Redfish client of the host's own BMC.

For each DPU the BMC lists (`Systems` members with `"SystemType": "DPU"`), the installer picks
the catalog image for the DPU's model, wraps it in an FMP capsule signed with the cluster's
capsule signer and the next MonotonicCount, serves it from its own HTTP server on the host
agent's address (loopback, or its namespace address under `dcfleet up --netns`), and hands the
URI to the BMC with `UpdateService.SimpleUpdate` (Targets: the DPU's updateable
FirmwareInventory entry). It follows the task monitor until the task ends and publishes
`dpu.provision_started`, `dpu.provision_progress`, then `dpu.provisioned` or
`dpu.provision_failed`.

Each provision is kept in a ProvisionJournal until its terminal event is
published, so a restarted host agent ends the provisions of its previous
process: it follows the BMC task to its end when SimpleUpdate had been
accepted, and reports the provision failed otherwise.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

import proto
from agents import capsule

from .. import _bus
from .._agent import HandlerError
from .._capsule_keys import load_signer, next_monotonic_count
from .._config import ConfigError, listen_address
from .._http_errors import describe_http_error
from .._supervise import RestartPolicy, retry
from ..bmc._material import account, read_password
from ._dpu_catalog import CatalogError, CatalogImage, ImageNotFound, choose_image, load_catalog
from ._provision_journal import OpenProvision, ProvisionJournal

if TYPE_CHECKING:
    from .._agent import Agent

V1 = "/redfish/v1"
# Timeout of SimpleUpdate, which is not repeated once sent: a repeat could start a second update.
REDFISH_TIMEOUT_S = 15.0
# Timeouts of one attempt of a GET, which is repeated while the BMC is unavailable. Short, so a
# request lost in a network cut is sent again soon after the cut ends.
REDFISH_GET_TIMEOUT_S = 5.0
REDFISH_CONNECT_TIMEOUT_S = 3.0
TASK_POLL_S = 0.5
# Maximum time a provision follows one BMC task before it reports the task as stuck.
TASK_TIMEOUT_S = 600.0
# How long the BMC may stay unavailable (a network cut, a BMC or DPU agent restarting or failing) while a
# provision lists the DPUs, follows the task monitor or reads the installed version, before it fails.
BMC_UNAVAILABLE_S = 60.0
LIST_RETRY_S = BMC_UNAVAILABLE_S
LIST_RETRY_WAIT_S = 1.0
# How many provision request ids a host remembers, so that a repeated request gets the first reply.
REMEMBERED_REQUESTS = 64
FINAL_TASK_STATES = ("Completed", "Killed", "Exception", "Cancelled")


class ProvisionFailed(Exception):
    """A provisioning step failed; `task_state` is the BMC task's TaskState once it exists."""

    def __init__(self, reason: str, task_state: str = "") -> None:
        self.reason = reason
        self.task_state = task_state
        super().__init__(reason)


class BmcUnavailable(ProvisionFailed):
    """A Redfish request got no response (connection failed, timed out) or a 5xx one; a later one may succeed."""


class _NotConnected(ProvisionFailed):
    """No connection to the BMC could be made, so the request was not sent."""


@dataclass(frozen=True)
class DpuTarget:
    dpu_id: str
    model: str
    inventory_uri: str


@dataclass(frozen=True)
class Provision:
    provision_id: str
    target: DpuTarget
    image: CatalogImage


class DpuInstaller:
    """Provisions the DPUs of one host through its BMC; one per host agent."""

    def __init__(self, agent: "Agent", host_id: str) -> None:
        self.agent = agent
        self.host_id = host_id
        self.capsules: dict[str, bytes] = {}
        self.runner: web.AppRunner | None = None
        self.base_url = ""
        self.busy: set[str] = set()
        self.journal = ProvisionJournal(agent.config.state_dir, host_id)
        # Replies (or HandlerErrors) of recent requests by request id, oldest first.
        self.requests: dict[str, asyncio.Task] = {}

    # ---- entry point ---------------------------------------------------------------

    async def provision(self, image_name: str, request_id: str = "") -> dict[str, Any]:
        """Start provisioning every DPU of the host; return the provision ids once they started.

        A request whose request_id was seen before waits for the first one's
        reply and starts nothing, so a client may repeat a request it lost.
        """
        if not request_id:
            return await self._start_all(image_name)
        first = self.requests.get(request_id)
        if first is None:
            first = self.agent.spawn(self._reply_of(image_name), f"provision request {request_id}")
            self.requests[request_id] = first
            while len(self.requests) > REMEMBERED_REQUESTS:
                self.requests.pop(next(iter(self.requests)))
        else:
            self.agent.log.info("dpu.provision_request_repeated", request=request_id)
        reply = await asyncio.shield(first)
        if isinstance(reply, HandlerError):
            raise HandlerError(str(reply))
        return reply

    async def _reply_of(self, image_name: str) -> dict[str, Any] | HandlerError:
        # An error reply is a value here: the task is awaited by every repeat of its request.
        try:
            return await self._start_all(image_name)
        except HandlerError as exc:
            return exc

    async def _start_all(self, image_name: str) -> dict[str, Any]:
        try:
            catalog = load_catalog()
            async with self._redfish() as http:
                targets = await self._list_dpus_retrying(http)
        except (CatalogError, ConfigError, ProvisionFailed) as exc:
            raise HandlerError(f"cannot provision the DPUs of {self.host_id}: {exc}") from None
        if not targets:
            raise HandlerError(f"the BMC of {self.host_id} lists no DPU")
        provisions = []
        for target in targets:
            if target.dpu_id in self.busy:
                raise HandlerError(f"DPU {target.dpu_id} is already being provisioned")
            try:
                image = choose_image(catalog, target.model, image_name)
            except ImageNotFound as exc:
                raise HandlerError(str(exc)) from None
            provisions.append(Provision(f"prov-{uuid.uuid4().hex[:12]}", target, image))
        await self._ensure_server()
        for provision in provisions:
            self.busy.add(provision.target.dpu_id)
            self.agent.spawn(self._run(provision), f"provision {provision.target.dpu_id}")
        return {"provisions": [{"provision": p.provision_id, "dpu": p.target.dpu_id, "image": p.image.name,
                                "version": p.image.version} for p in provisions]}

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def recover(self) -> None:
        """End the provisions that this host's previous agent process started and did not end."""
        for entry in await asyncio.to_thread(self.journal.open_provisions):
            data = entry.started.data
            dpu_id = str(data.get("dpu", ""))
            self.busy.add(dpu_id)
            self.agent.log.info("dpu.provision_resumed", provision=entry.provision_id, dpu=dpu_id,
                                task=entry.task_uri)
            steps = self._resume(entry)
            self.agent.spawn(self._conclude(entry.provision_id, dpu_id, str(data.get("image", "")), steps),
                             f"resume provision {dpu_id}")

    # ---- one DPU -------------------------------------------------------------------

    async def _run(self, provision: Provision) -> None:
        await self._conclude(provision.provision_id, provision.target.dpu_id, provision.image.name,
                             self._provision(provision))

    async def _conclude(self, provision_id: str, dpu_id: str, image: str, steps: Awaitable[tuple[str, str]]) -> None:
        """Await a provision's steps and publish its terminal event; then forget it."""
        log = self.agent.log.bind(provision=provision_id, dpu=dpu_id, image=image)
        ids = {"provision": provision_id, "host": self.host_id, "dpu": dpu_id, "image": image}
        try:
            task_uri, version = await steps
        except ProvisionFailed as exc:
            log.warning("dpu.provision_failed", reason=exc.reason, task_state=exc.task_state)
            await self.agent.publish(proto.DpuProvisionFailed(**ids, reason=exc.reason, task_state=exc.task_state))
        else:
            log.info("dpu.provisioned", version=version, task=task_uri)
            await self.agent.publish(proto.DpuProvisioned(**ids, version=version, task_uri=task_uri))
        finally:
            self.capsules.pop(provision_id, None)
            self.busy.discard(dpu_id)
        await asyncio.to_thread(self.journal.end, provision_id)

    async def _provision(self, provision: Provision) -> tuple[str, str]:
        """Run one provision; return the task URI and the version FirmwareInventory then reports."""
        image_uri, monotonic_count = await self._publish_capsule(provision)
        started = proto.DpuProvisionStarted(
            provision=provision.provision_id, host=self.host_id, dpu=provision.target.dpu_id,
            image=provision.image.name, version=provision.image.version, monotonic_count=monotonic_count,
            image_uri=image_uri)
        envelope = self.agent.event_envelope(started)
        await asyncio.to_thread(self.journal.begin, provision.provision_id, envelope)
        await self.agent.publish(started, envelope)
        async with self._redfish() as http:
            monitor_uri = await self._simple_update(http, image_uri, provision.target.inventory_uri)
            await asyncio.to_thread(self.journal.set_task, provision.provision_id, monitor_uri)
            return await self._finish_task(http, provision.provision_id, provision.target.dpu_id, monitor_uri,
                                           provision.target.inventory_uri)

    async def _resume(self, entry: OpenProvision) -> tuple[str, str]:
        """Continue a provision of a previous process; return the task URI and the installed version."""
        # The previous process may have died before the stream stored this event; its id is stored once.
        # NOTE: only within the stream's 120 s duplicate window; a host agent down longer stores it twice.
        await self.agent.publish(proto.parse(entry.started), entry.started)
        if not entry.task_uri:
            raise ProvisionFailed("the host agent restarted before the BMC accepted the update; the capsule "
                                  "server went with the previous process")
        dpu_id = str(entry.started.data.get("dpu", ""))
        async with self._redfish() as http:
            targets = [t for t in await self._list_dpus(http) if t.dpu_id == dpu_id]
            if not targets:
                raise ProvisionFailed(f"the BMC of {self.host_id} no longer lists DPU {dpu_id}")
            return await self._finish_task(http, entry.provision_id, dpu_id, entry.task_uri,
                                           targets[0].inventory_uri)

    async def _finish_task(self, http: aiohttp.ClientSession, provision_id: str, dpu_id: str, monitor_uri: str,
                           inventory_uri: str) -> tuple[str, str]:
        task = await self._follow(http, provision_id, dpu_id, monitor_uri)
        if task.get("TaskState") != "Completed":
            raise ProvisionFailed(_task_reason(task), task.get("TaskState", ""))
        inventory = await retry(lambda: self._get(http, inventory_uri), (BmcUnavailable,), BMC_UNAVAILABLE_S,
                                _wait_between_attempts())
        return task.get("@odata.id", monitor_uri), inventory.get("Version", "")

    async def _publish_capsule(self, provision: Provision) -> tuple[str, int]:
        """Build and sign the capsule, and serve it; return its URI and MonotonicCount."""
        try:
            image = await asyncio.to_thread(provision.image.read)
            signer = await asyncio.to_thread(load_signer, self.agent.config.state_dir)
            monotonic_count = await asyncio.to_thread(next_monotonic_count, self.agent.config.state_dir)
        except (CatalogError, ConfigError) as exc:
            raise ProvisionFailed(str(exc)) from None
        data = await asyncio.to_thread(
            capsule.build_capsule, image, fw_version=provision.image.fw_version, monotonic_count=monotonic_count,
            signer_cert=signer.cert, signer_key=signer.key,
            # Once installed, the DPU refuses any older image: FMP version rollback protection.
            lowest_supported_version=provision.image.fw_version)
        self.capsules[provision.provision_id] = data
        return f"{self.base_url}/capsules/{provision.provision_id}.cap", monotonic_count

    # ---- Redfish calls -------------------------------------------------------------

    def _redfish(self) -> aiohttp.ClientSession:
        config = self.agent.config
        operator = account(config, "Operator")
        return aiohttp.ClientSession(
            base_url=_bus.redfish_base_url(config, config.host(self.host_id)),
            auth=aiohttp.BasicAuth(operator.user, read_password(operator)),
            timeout=aiohttp.ClientTimeout(total=REDFISH_TIMEOUT_S, connect=REDFISH_CONNECT_TIMEOUT_S),
            connector=aiohttp.TCPConnector(ssl=_bus.redfish_client_ssl(config)),
        )

    async def _get(self, http: aiohttp.ClientSession, uri: str) -> dict[str, Any]:
        """GET a Redfish resource in one attempt of at most REDFISH_GET_TIMEOUT_S.

        Raises BmcUnavailable for no response or a 5xx one, which a later attempt may not get.
        """
        timeout = aiohttp.ClientTimeout(total=REDFISH_GET_TIMEOUT_S, connect=REDFISH_CONNECT_TIMEOUT_S)
        try:
            async with http.get(uri, timeout=timeout) as response:
                body = await response.json(content_type=None)
                if response.status >= 500:
                    raise BmcUnavailable(f"GET {uri}: HTTP {response.status}: {_error_text(body)}")
                if response.status >= 400:
                    raise ProvisionFailed(f"GET {uri}: HTTP {response.status}: {_error_text(body)}")
                return body
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise BmcUnavailable(f"GET {uri} failed: {describe_http_error(exc, REDFISH_GET_TIMEOUT_S)}") from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise ProvisionFailed(f"GET {uri} failed: {describe_http_error(exc)}") from None

    async def _list_dpus_retrying(self, http: aiohttp.ClientSession) -> list[DpuTarget]:
        """List the DPUs, asking again for up to LIST_RETRY_S while the BMC is unavailable.

        A BMC returns 503 while a DPU agent does not respond (a cut, a restart), and a later request
        may succeed.
        """
        return await retry(lambda: self._list_dpus(http), (BmcUnavailable,), LIST_RETRY_S, _wait_between_attempts())

    async def _list_dpus(self, http: aiohttp.ClientSession) -> list[DpuTarget]:
        systems = await self._get(http, f"{V1}/Systems")
        dpus = []
        for member in systems.get("Members", []):
            system = await self._get(http, member["@odata.id"])
            if system.get("SystemType") == "DPU":
                dpus.append((system["Id"], system.get("Model", ""), member["@odata.id"]))
        if not dpus:
            return []
        inventory = await self._get(http, f"{V1}/UpdateService/FirmwareInventory")
        entries = [await self._get(http, m["@odata.id"]) for m in inventory.get("Members", [])]
        targets = []
        for dpu_id, model, system_uri in dpus:
            for entry in entries:
                related = {item.get("@odata.id") for item in entry.get("RelatedItem", [])}
                if entry.get("Updateable") and system_uri in related:
                    targets.append(DpuTarget(dpu_id, model, entry["@odata.id"]))
                    break
            else:
                raise ProvisionFailed(f"the BMC lists no updateable firmware for DPU {dpu_id}")
        return targets

    async def _simple_update(self, http: aiohttp.ClientSession, image_uri: str, target_uri: str) -> str:
        """POST SimpleUpdate; return the task monitor URI.

        Repeated for up to BMC_UNAVAILABLE_S only while no connection can be made, because then the
        request was never sent. A request that was sent and got no reply is not repeated, since the
        BMC may have started the update.
        """
        return await retry(lambda: self._post_simple_update(http, image_uri, target_uri), (_NotConnected,),
                           BMC_UNAVAILABLE_S, _wait_between_attempts())

    async def _post_simple_update(self, http: aiohttp.ClientSession, image_uri: str, target_uri: str) -> str:
        uri = f"{V1}/UpdateService/Actions/UpdateService.SimpleUpdate"
        body = {"ImageURI": image_uri, "TransferProtocol": "HTTP", "Targets": [target_uri]}
        try:
            async with http.post(uri, json=body) as response:
                reply = await response.json(content_type=None)
                if response.status != 202 or "Location" not in response.headers:
                    raise ProvisionFailed(f"SimpleUpdate: HTTP {response.status}: {_error_text(reply)}")
                return response.headers["Location"]
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise _NotConnected(f"SimpleUpdate failed: {describe_http_error(exc)}") from None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise ProvisionFailed(f"SimpleUpdate failed: {describe_http_error(exc, REDFISH_TIMEOUT_S)}") from None

    async def _follow(self, http: aiohttp.ClientSession, provision_id: str, dpu_id: str,
                      monitor_uri: str) -> dict[str, Any]:
        """Poll the task monitor until the task ends; publish each change of state or percentage.

        A monitor that does not respond, or responds 5xx, is polled again for up to
        BMC_UNAVAILABLE_S, because the task goes on in the BMC meanwhile.
        """
        deadline = time.monotonic() + TASK_TIMEOUT_S
        last_response = time.monotonic()
        reported: tuple[str, int] | None = None
        while time.monotonic() < deadline:
            try:
                task = await self._get(http, monitor_uri)
            except BmcUnavailable as exc:
                if time.monotonic() - last_response > BMC_UNAVAILABLE_S:
                    raise ProvisionFailed(f"the BMC task at {monitor_uri} was unavailable for more than "
                                          f"{BMC_UNAVAILABLE_S:g} s: {exc.reason}", reported[0] if reported else "")
                self.agent.log.debug("dpu.task_unavailable", provision=provision_id, error=exc.reason)
                await asyncio.sleep(TASK_POLL_S)
                continue
            last_response = time.monotonic()
            state, percent = task.get("TaskState", ""), int(task.get("PercentComplete", 0))
            if (state, percent) != reported:
                reported = (state, percent)
                await self.agent.publish(proto.DpuProvisionProgress(
                    provision=provision_id, host=self.host_id, dpu=dpu_id,
                    task_state=state, percent_complete=percent))
            if state in FINAL_TASK_STATES:
                return task
            await asyncio.sleep(TASK_POLL_S)
        raise ProvisionFailed(f"the BMC task at {monitor_uri} did not finish within {TASK_TIMEOUT_S:g} s",
                              reported[0] if reported else "")

    # ---- image server --------------------------------------------------------------

    async def _ensure_server(self) -> None:
        if self.runner is not None:
            return
        app = web.Application()
        app.router.add_get("/capsules/{name}", self._serve_capsule)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        address = listen_address()
        try:
            await web.TCPSite(runner, address, 0).start()
        except BaseException:
            await runner.cleanup()
            raise
        self.runner = runner
        self.base_url = f"http://{address}:{runner.addresses[0][1]}"
        self.agent.log.info("dpu_installer.listening", url=self.base_url)

    async def _serve_capsule(self, request: web.Request) -> web.Response:
        data = self.capsules.get(request.match_info["name"].removesuffix(".cap"))
        if data is None:
            raise web.HTTPNotFound(text="no capsule with this name is being provisioned\n")
        return web.Response(body=data, content_type="application/octet-stream")


def _wait_between_attempts() -> RestartPolicy:
    return RestartPolicy(initial_s=LIST_RETRY_WAIT_S, factor=1.0, max_s=LIST_RETRY_WAIT_S)


def _error_text(body: Any) -> str:
    """Return the messages of a Redfish error object, or the body itself."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        infos = body["error"].get("@Message.ExtendedInfo") or []
        texts = [i.get("Message", "") for i in infos if isinstance(i, dict)]
        return " ".join(texts) or str(body["error"].get("message", ""))
    return str(body)[:300]


def _task_reason(task: dict[str, Any]) -> str:
    """Return the last message of a failed task, which states why it failed."""
    messages = [m.get("Message", "") for m in task.get("Messages", []) if isinstance(m, dict)]
    return messages[-1] if messages else f"the task ended {task.get('TaskState', 'without a state')}"
