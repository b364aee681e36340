"""Messages of DPU management OS provisioning: installs on the DPU agent and the installer's events."""

from __future__ import annotations

from ._messages import Message, message

# ---- events ------------------------------------------------------------------


@message("dpu.state_changed")
class DpuStateChanged(Message):
    """A DPU's OS state moved: Updating, Booting, Running (with the OS version now running)."""

    dpu: str
    host: str
    state: str
    os_version: str
    # How far the running install is, 0-100; 100 once it finished or was abandoned.
    progress_percent: int = 100
    reason: str = ""


@message("dpu.provision_started")
class DpuProvisionStarted(Message):
    provision: str
    host: str
    dpu: str
    image: str
    version: str
    monotonic_count: int
    image_uri: str


@message("dpu.provision_progress")
class DpuProvisionProgress(Message):
    provision: str
    host: str
    dpu: str
    task_state: str
    percent_complete: int


@message("dpu.provisioned")
class DpuProvisioned(Message):
    provision: str
    host: str
    dpu: str
    image: str
    version: str
    task_uri: str


@message("dpu.provision_failed")
class DpuProvisionFailed(Message):
    provision: str
    host: str
    dpu: str
    image: str
    reason: str
    # TaskState of the BMC's task, or "" when the failure came before SimpleUpdate was accepted.
    task_state: str = ""


# ---- commands ----------------------------------------------------------------


@message("dpu.install")
class DpuInstall(Message):
    """Install the capsule stored at `capsule_path` (a file in the cluster's state dir)."""

    dpu: str
    capsule_path: str
    capsule_sha256: str


@message("host.provision_dpu")
class HostProvisionDpu(Message):
    """Provision the management OS of every DPU of the host; `image` "" picks the newest per model.

    A repeated `request_id` gets the reply of the first request with that id
    and starts nothing new, so a sender may repeat a request whose reply it lost.
    """

    image: str = ""
    request_id: str = ""
