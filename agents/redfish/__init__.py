"""A Redfish service (DMTF DSP0266) for one host's BMC, over a pluggable backend."""

from agents.redfish._app import RunningService, create_app, serve
from agents.redfish._backend import (
    RESET_TYPES,
    BackendUnavailable,
    Dpu,
    FirmwareComponent,
    HostSystem,
    InstallFailed,
    MemoryBackend,
    ProgressCallback,
    RedfishBackend,
    format_fw_version,
)
from agents.redfish._errors import RedfishError, error_body, message
from agents.redfish._tasks import TASK_STATES

__all__ = [
    "RESET_TYPES",
    "TASK_STATES",
    "BackendUnavailable",
    "Dpu",
    "FirmwareComponent",
    "HostSystem",
    "InstallFailed",
    "MemoryBackend",
    "ProgressCallback",
    "RedfishBackend",
    "RedfishError",
    "RunningService",
    "create_app",
    "error_body",
    "format_fw_version",
    "message",
    "serve",
]
