"""SimpleUpdate: download a capsule, check it, and hand it to the backend while a task tracks it."""

from __future__ import annotations

import asyncio
import base64
import ssl
import uuid
from dataclasses import dataclass

import aiohttp
import structlog
from cryptography import x509

from agents import capsule
from agents.redfish._backend import (
    BackendUnavailable,
    FirmwareComponent,
    InstallFailed,
    RedfishBackend,
)
from agents.redfish._tasks import Task, TaskRegistry, task_message

log = structlog.get_logger("agents.redfish.update")

INVENTORY_URI = "/redfish/v1/UpdateService/FirmwareInventory"
TRANSFER_PROTOCOLS = ("HTTP", "HTTPS")
# Shares of PercentComplete given to each phase; install gets the rest.
DOWNLOAD_SHARE = 30
VERIFY_SHARE = 10


@dataclass(frozen=True)
class UpdatePolicy:
    """Download limits and the trust anchor for checking update images."""

    trusted_cert: x509.Certificate
    image_type_id: uuid.UUID = capsule.DPU_MGMT_OS_IMAGE_TYPE_ID
    download_timeout_s: float = 30.0
    max_image_bytes: int = 256 * 1024 * 1024
    download_ssl: ssl.SSLContext | None = None


@dataclass(frozen=True)
class SimpleUpdateRequest:
    """The validated parameters of an UpdateService.SimpleUpdate action."""

    image_uri: str
    targets: tuple[str, ...]
    username: str | None = None
    password: str | None = None


class UpdateRejected(Exception):
    """An update step failed; `note` is the Redfish message that ends the task."""

    def __init__(self, key: str, *args: object, detail: str) -> None:
        self.note = task_message(key, *args, detail=detail)
        super().__init__(self.note["Message"])


def check_capsule(data: bytes, image_uri: str, component: FirmwareComponent,
                  policy: UpdatePolicy) -> capsule.FmpCapsule:
    """Decode and verify a downloaded capsule for one component; raise UpdateRejected if unfit."""
    target_uri = f"{INVENTORY_URI}/{component.component_id}"
    try:
        decoded = capsule.decode_capsule(data)
    except capsule.CapsuleMalformed as exc:
        raise UpdateRejected("Update.VerificationFailed", image_uri, target_uri,
                             detail=f"Reason: {exc}.") from exc
    if decoded.update_image_type_id != policy.image_type_id:
        raise UpdateRejected(
            "Update.UpdateNotApplicable", image_uri, target_uri,
            detail=(f"Reason: UpdateImageTypeId {str(decoded.update_image_type_id).upper()} is "
                    f"not the expected {str(policy.image_type_id).upper()}."),
        )
    try:
        capsule.verify_capsule(decoded, policy.trusted_cert)
    except capsule.SignatureRejected as exc:
        raise UpdateRejected("Update.VerificationFailed", image_uri, target_uri,
                             detail=f"Reason: {exc}.") from exc
    if decoded.monotonic_count <= component.monotonic_count:
        raise UpdateRejected(
            "Update.UpdateSkippedVersionTooLow", target_uri, image_uri,
            detail=(f"Reason: MonotonicCount {decoded.monotonic_count} is not above the "
                    f"installed {component.monotonic_count}, so the update would be a rollback."),
        )
    return decoded


async def download_image(request: SimpleUpdateRequest, policy: UpdatePolicy,
                         on_progress) -> bytes:
    """Fetch ImageURI, reporting the fraction received; raise UpdateRejected on any failure."""
    headers = {}
    if request.username is not None:
        credentials = f"{request.username}:{request.password or ''}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
    timeout = aiohttp.ClientTimeout(total=policy.download_timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(request.image_uri, headers=headers,
                                   ssl=policy.download_ssl) as response:
                if response.status != 200:
                    raise _transfer_failed(request, f"the image server returned HTTP {response.status}")
                return await _read_limited(response, policy.max_image_bytes, on_progress, request)
    except asyncio.TimeoutError as exc:
        raise _transfer_failed(
            request, f"the download timed out after {policy.download_timeout_s} s") from exc
    except aiohttp.ClientError as exc:
        raise _transfer_failed(request, f"{type(exc).__name__}: {exc}") from exc


async def _read_limited(response: aiohttp.ClientResponse, max_bytes: int, on_progress,
                        request: SimpleUpdateRequest) -> bytes:
    expected = response.content_length
    if expected is not None and expected > max_bytes:
        raise _transfer_failed(request, f"the image is {expected} bytes, above the {max_bytes} limit")
    chunks = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        chunks.extend(chunk)
        if len(chunks) > max_bytes:
            raise _transfer_failed(request, f"the image exceeds the {max_bytes} byte limit")
        if expected:
            on_progress(len(chunks) / expected)
    return bytes(chunks)


def _transfer_failed(request: SimpleUpdateRequest, reason: str) -> UpdateRejected:
    return UpdateRejected("Update.TransferFailed", request.image_uri, ", ".join(request.targets),
                          detail=f"Reason: {reason}.")


async def run_simple_update(task: Task, tasks: TaskRegistry, backend: RedfishBackend,
                            request: SimpleUpdateRequest, policy: UpdatePolicy) -> None:
    """Carry out one SimpleUpdate; the task ends Completed or Exception, never left Running."""
    bound = log.bind(task_id=task.task_id, image_uri=request.image_uri, targets=request.targets)
    tasks.start(task)
    bound.info("update.started")
    try:
        await _update_phases(task, tasks, backend, request, policy)
    except UpdateRejected as exc:
        tasks.fail(task, exc.note)
        bound.info("update.failed", reason=str(exc))
    except BackendUnavailable as exc:
        tasks.fail(task, task_message("Update.ApplyFailed", request.image_uri,
                                      ", ".join(request.targets), detail=f"Reason: {exc}."))
        bound.info("update.failed", reason=str(exc))
    except asyncio.CancelledError:
        tasks.fail(task, task_message("Base.GeneralError",
                                      detail="The service stopped before the update finished."))
        raise
    except Exception as exc:
        tasks.fail(task, task_message("Base.InternalError", detail=f"{type(exc).__name__}: {exc}"))
        bound.exception("update.failed")
    else:
        bound.info("update.completed")


async def _update_phases(task: Task, tasks: TaskRegistry, backend: RedfishBackend,
                         request: SimpleUpdateRequest, policy: UpdatePolicy) -> None:
    components = await _resolve_targets(backend, request)

    def on_download(fraction: float) -> None:
        tasks.progress(task, int(fraction * DOWNLOAD_SHARE))

    data = await download_image(request, policy, on_download)
    tasks.progress(task, DOWNLOAD_SHARE)

    for component in components:
        check_capsule(data, request.image_uri, component, policy)
    tasks.progress(task, DOWNLOAD_SHARE + VERIFY_SHARE)

    install_share = (100 - DOWNLOAD_SHARE - VERIFY_SHARE) / len(components)
    for position, component in enumerate(components):
        await _install_one(task, tasks, backend, request, component, data,
                           DOWNLOAD_SHARE + VERIFY_SHARE + position * install_share, install_share)
    tasks.complete(task, task_message("Update.UpdateSuccessful", ", ".join(request.targets),
                                      request.image_uri))


async def _install_one(task: Task, tasks: TaskRegistry, backend: RedfishBackend,
                       request: SimpleUpdateRequest, component: FirmwareComponent, data: bytes,
                       base_percent: float, share: float) -> None:
    target_uri = f"{INVENTORY_URI}/{component.component_id}"
    tasks.progress(task, int(base_percent),
                   task_message("Update.InstallingOnComponent", request.image_uri, target_uri))

    def on_install(percent: int) -> None:
        tasks.progress(task, int(base_percent + share * min(max(percent, 0), 100) / 100))

    try:
        await backend.install_firmware(component.component_id, data, on_install)
    except InstallFailed as exc:
        raise UpdateRejected("Update.ApplyFailed", request.image_uri, target_uri,
                             detail=f"Reason: {exc.reason}.") from exc


async def _resolve_targets(backend: RedfishBackend,
                           request: SimpleUpdateRequest) -> list[FirmwareComponent]:
    inventory = {c.component_id: c for c in await backend.firmware_inventory()}
    components = []
    for target in request.targets:
        component = inventory.get(target.rstrip("/").rsplit("/", 1)[-1])
        if component is None or not component.updateable:
            raise UpdateRejected("Update.UpdateNotApplicable", request.image_uri, target,
                                 detail="Reason: the target is not an updateable component.")
        components.append(component)
    return components
