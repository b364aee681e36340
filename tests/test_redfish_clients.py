"""Real Redfish clients and DMTF's validators against the service."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import pathlib
import subprocess
import sys
import threading
import time

import pytest
import redfish as dmtf_redfish
import sushy
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import agents.redfish as service_lib
from agents import capsule

REPO = pathlib.Path(__file__).resolve().parents[1]
SCHEMA_DIR = REPO.parent / "shared" / "redfish" / "csdl"
VENV_BIN = pathlib.Path(sys.executable).parent
V1 = "/redfish/v1"
DPU_OS_URI = f"{V1}/UpdateService/FirmwareInventory/dpu0_os"
USER, PASSWORD = "admin", "adminpass1"


class ThreadedService:
    """A Redfish service and a capsule file server on an event loop in a background thread."""

    def __init__(self, trusted: x509.Certificate, capsules: dict[str, bytes]) -> None:
        self.backend = service_lib.MemoryBackend()
        self._trusted = trusted
        self._capsules = capsules
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _start(self) -> None:
        app = service_lib.create_app(self.backend, credentials={USER: (PASSWORD, "Administrator")},
                                     trusted_capsule_cert=self._trusted)
        self.service = await service_lib.serve(app)
        files = web.Application()
        files.router.add_get("/{name}", self._serve_capsule)
        self._files = web.AppRunner(files)
        await self._files.setup()
        await web.TCPSite(self._files, "127.0.0.1", 0).start()
        self.files_url = f"http://127.0.0.1:{self._files.addresses[0][1]}"

    async def _serve_capsule(self, request: web.Request) -> web.Response:
        return web.Response(body=self._capsules[request.match_info["name"]])

    async def _stop(self) -> None:
        await self.service.close()
        await self._files.cleanup()

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(scope="module")
def signer():
    return capsule.generate_signing_identity("client test signer")


@pytest.fixture
def threaded(signer):
    capsules = {
        f"os{count}.cap": capsule.build_capsule(
            b"os image" * 1000, fw_version=0x0500_0000 + count, monotonic_count=count,
            signer_cert=signer.cert, signer_key=signer.key)
        for count in (2, 3)
    }
    running = ThreadedService(signer.cert, capsules)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def wait_until(check, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError("condition not met before the deadline")


def test_sushy_runs_update_and_reset(threaded):
    root = sushy.Sushy(f"{threaded.service.url}{V1}/", username=USER, password=PASSWORD)
    updates = root.get_update_service()
    monitor = updates.simple_update(f"{threaded.files_url}/os2.cap", targets=[DPU_OS_URI],
                                    transfer_protocol="HTTP")
    tasks = root.get_task_service().tasks

    def finished_state():
        task = tasks.get_member(monitor.task_monitor_uri)
        state = task.task_state.value
        return state if state not in ("New", "Running") else None

    assert wait_until(finished_state) == "Completed"
    inventory = updates.firmware_inventory.get_member(DPU_OS_URI)
    assert inventory.version == "5.0.2"

    system = root.get_system(f"{V1}/Systems/host")
    system.reset_system(sushy.ResetType.FORCE_OFF)
    system.refresh()
    assert system.power_state == sushy.PowerState.OFF
    assert threaded.backend.resets == ["ForceOff"]


def test_dmtf_client_runs_update_and_reset(threaded):
    client = dmtf_redfish.redfish_client(base_url=threaded.service.url, username=USER,
                                         password=PASSWORD)
    client.login(auth="session")
    try:
        response = client.post(f"{V1}/UpdateService/Actions/UpdateService.SimpleUpdate",
                               body={"ImageURI": f"{threaded.files_url}/os3.cap",
                                     "TransferProtocol": "HTTP", "Targets": [DPU_OS_URI]})
        assert response.status == 202
        assert response.is_processing
        monitor = response.task_location

        def finished_task():
            polled = client.get(monitor)
            return polled.dict if polled.status == 200 else None

        task = wait_until(finished_task)
        assert task["TaskState"] == "Completed"
        assert client.get(DPU_OS_URI).dict["Version"] == "5.0.3"

        reset = client.post(f"{V1}/Systems/host/Actions/ComputerSystem.Reset",
                            body={"ResetType": "GracefulShutdown"})
        assert reset.status == 204
        assert client.get(f"{V1}/Systems/host").dict["PowerState"] == "Off"
    finally:
        client.logout()


# --- DMTF validators ---------------------------------------------------------------------

def write_tls_identity(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.pem", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def https_service(tmp_path_factory, signer):
    """The standalone service over HTTPS in its own process.

    HTTP Basic must run over HTTPS for the protocol validator. AIOHTTP_NO_EXTENSIONS selects
    aiohttp's Python HTTP parser: the C parser (llhttp) returns 400 for an unknown method such
    as FAKEMETHODFORTEST before the application sees it, where Redfish requires 405 or 501.
    """
    directory = tmp_path_factory.mktemp("https_service")
    cert_path, key_path = write_tls_identity(directory)
    trusted_path = directory / "trusted.pem"
    trusted_path.write_bytes(signer.cert.public_bytes(serialization.Encoding.PEM))
    env = dict(os.environ, AIOHTTP_NO_EXTENSIONS="1", PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        [sys.executable, "-m", "agents.redfish", "--tls-cert", str(cert_path),
         "--tls-key", str(key_path), "--trusted-cert", str(trusted_path),
         "--user", f"{USER}:{PASSWORD}:Administrator"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("listening https://"), f"service did not start: {line!r}"
        yield line.split()[1], cert_path, directory
    finally:
        process.terminate()
        process.wait(10)


def run_validator(args: list[str], cert_path: pathlib.Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, REQUESTS_CA_BUNDLE=str(cert_path))
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)


def test_service_validator_reports_no_failures(https_service):
    if not SCHEMA_DIR.is_dir():
        pytest.skip(f"DMTF CSDL schemas not found at {SCHEMA_DIR}")
    url, cert_path, directory = https_service
    result = run_validator(
        [str(VENV_BIN / "rf_service_validator"), "--rhost", url, "-u", USER, "-p", PASSWORD,
         "--authtype", "Basic", "--skipschema", "--schema_directory", str(SCHEMA_DIR),
         "--logdir", str(directory / "service_validator")],
        cert_path,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Fail: 0" in result.stdout
    assert "Fail: 1" not in result.stdout


def test_protocol_validator_reports_no_failures(https_service):
    url, cert_path, directory = https_service
    report_dir = directory / "protocol_validator"
    result = run_validator(
        [str(VENV_BIN / "rf_protocol_validator"), "-r", url, "-u", USER, "-p", PASSWORD,
         "--report-dir", str(report_dir), "--report-type", "tsv", "--ca-bundle", str(cert_path)],
        cert_path,
    )
    failures = [line for report in report_dir.glob("*.tsv")
                for line in report.read_text().splitlines() if "\tFAIL\t" in line]
    assert failures == []
    assert result.returncode == 0, result.stdout[-3000:]
    assert "FAIL: 0" in result.stdout
