"""The BMC of a running cluster: provisioning through `dcfleet provision-dpu`, failed updates, DMTF validators.

One cluster (one host, no VMs, power automation off) serves every test in this module. The
BMC's download timeout is shortened to 2 s through DCFLEET_BMC_DOWNLOAD_TIMEOUT_S.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

import proto
from _support import REPO, SHARED, dcfleet_command, processes_mentioning
from agents import capsule
from agents._client import cluster_client
from agents._capsule_keys import load_signer, next_monotonic_count
from agents._supervise import PidRegistry
from agents.host._dpu_catalog import fw_version_of
from proto import subjects

V1 = "/redfish/v1"
DPU_OS_URI = f"{V1}/UpdateService/FirmwareInventory/h1-dpu_os"
UPDATE_URI = f"{V1}/UpdateService/Actions/UpdateService.SimpleUpdate"
SCHEMA_DIR = SHARED / "redfish" / "csdl"
VENV_BIN = Path(sys.executable).parent
DOWNLOAD_TIMEOUT_S = 2


class Cluster:
    def __init__(self, state: Path, process: subprocess.Popen) -> None:
        self.state = state
        self.process = process
        config = json.loads((state / "cluster.json").read_text())
        self.bmc_url = f"https://127.0.0.1:{config['hosts'][0]['bmc_port']}"
        self.ca_file = state / "secrets" / "tls" / "ca.pem"
        self.password = (state / "secrets" / "bmc-password").read_text().strip()
        self.http = requests.Session()
        self.http.auth = ("admin", self.password)
        self.http.verify = str(self.ca_file)
        # Without this, a REQUESTS_CA_BUNDLE in the environment would replace the cluster CA.
        self.http.trust_env = False

    def get(self, uri: str) -> requests.Response:
        return self.http.get(self.bmc_url + uri, timeout=10)

    def dpu_os_version(self) -> str:
        return self.get(DPU_OS_URI).json()["Version"]

    def simple_update(self, image_uri: str) -> dict:
        """POST SimpleUpdate for the DPU OS and return the task once it has ended."""
        response = self.http.post(self.bmc_url + UPDATE_URI, timeout=10, json={
            "ImageURI": image_uri, "TransferProtocol": "HTTP", "Targets": [DPU_OS_URI]})
        assert response.status_code == 202, response.text
        monitor = response.headers["Location"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            polled = self.get(monitor)
            if polled.status_code == 200:
                return polled.json()
            time.sleep(0.2)
        raise AssertionError(f"task {monitor} did not end within 60 s")


def wait_for_bmc(cluster_state: Path, process: subprocess.Popen) -> Cluster:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            cluster = Cluster(cluster_state, process)
            if cluster.get(f"{V1}/Systems/h1-dpu").status_code == 200:
                return cluster
        except (OSError, ValueError, KeyError, requests.RequestException):
            pass
        time.sleep(0.5)
    raise AssertionError("the BMC of h1 did not serve Systems/h1-dpu within 60 s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("bmc_cluster") / "state"
    env = dict(os.environ, DCFLEET_BMC_DOWNLOAD_TIMEOUT_S=str(DOWNLOAD_TIMEOUT_S))
    process = subprocess.Popen(
        dcfleet_command("up", "--state-dir", str(state), "--hosts", "1", "--vms", "0",
                        "--power-automation", "Off"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        yield wait_for_bmc(state, process)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    assert processes_mentioning(str(state)) == []


class CapsuleServer:
    """Serves capsules by name on loopback; `/slow/...` responds after the BMC's download timeout."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        files = self.files

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                name = self.path.rsplit("/", 1)[-1]
                if self.path.startswith("/slow/"):
                    time.sleep(DOWNLOAD_TIMEOUT_S + 2)
                data = files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def capsule_server():
    server = CapsuleServer()
    try:
        yield server
    finally:
        server.close()


def read_events(state: Path, pattern: str) -> list[dict]:
    result = subprocess.run(dcfleet_command("events", "--state-dir", str(state), "--json", "--type", pattern),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


# ---- provisioning ------------------------------------------------------------------


def test_provision_dpu_completes(cluster):
    result = subprocess.run(
        dcfleet_command("provision-dpu", "--host", "h1", "--state-dir", str(cluster.state)),
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "task Completed 100%" in result.stdout
    assert "FirmwareInventory reports version 2.2.0" in result.stdout
    assert cluster.dpu_os_version() == "2.2.0"
    types = [e["type"] for e in read_events(cluster.state, "dpu.provision*")]
    assert types[0] == "dpu.provision_started"
    assert types[-1] == "dpu.provisioned"
    states = [e["data"]["state"] for e in read_events(cluster.state, "dpu.state_changed")]
    assert states == ["Updating", "Updating", "Booting", "Running"]


def test_provision_dpu_unknown_image_exits_2(cluster):
    result = subprocess.run(
        dcfleet_command("provision-dpu", "--host", "h1", "--image", "bf2-mgmt-os-1.9.0",
                        "--state-dir", str(cluster.state)),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "no image 'bf2-mgmt-os-1.9.0' for DPU model 'BlueField-3'" in result.stderr


def test_repeated_provision_request_starts_once(cluster):
    replies = asyncio.run(send_provision_twice(cluster.state, "bf3-mgmt-os-2.2.0"))
    assert replies[0] == replies[1]
    assert replies[2] == replies[0]
    provision = replies[0]["provisions"][0]["provision"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        events = [e for e in read_events(cluster.state, "dpu.provision*") if e["data"]["provision"] == provision]
        if events and events[-1]["type"] == "dpu.provisioned":
            break
        time.sleep(1)
    assert [e["type"] for e in events].count("dpu.provision_started") == 1
    assert events[-1]["type"] == "dpu.provisioned"
    started = read_events(cluster.state, "dpu.provision_started")
    assert sum(e["data"]["provision"] == provision for e in started) == 1


async def send_provision_twice(state: Path, image: str) -> list[dict]:
    """Send one provision request id twice at once and a third time after the replies; return the replies."""
    message = proto.HostProvisionDpu(image=image, request_id=uuid.uuid4().hex)
    subject = subjects.host_command("h1", "provision_dpu")
    async with cluster_client(str(state), None) as client:
        first, second = await asyncio.gather(client.request(subject, message, 60.0),
                                             client.request(subject, message, 60.0))
        third = await client.request(subject, message, 60.0)
    return [first, second, third]


# ---- failed updates keep the installed OS --------------------------------------------


def cluster_capsule(cluster: Cluster, **options) -> bytes:
    signer = load_signer(cluster.state)
    return capsule.build_capsule(b"image", fw_version=fw_version_of("9.0.0"),
                                 monotonic_count=options.pop("monotonic_count", None)
                                 or next_monotonic_count(cluster.state),
                                 signer_cert=signer.cert, signer_key=signer.key, **options)


def foreign_capsule(cluster: Cluster) -> bytes:
    foreign = capsule.generate_signing_identity("not the cluster's signer")
    return capsule.build_capsule(b"image", fw_version=fw_version_of("9.0.0"), monotonic_count=10_000,
                                 signer_cert=foreign.cert, signer_key=foreign.key)


FAILURES = {
    # case: (capsule builder, URI path, text of the task's last message)
    "bad-signature": (foreign_capsule, "/os.cap", "signature"),
    "wrong-guid": (lambda c: cluster_capsule(c, update_image_type_id=uuid.uuid4()), "/os.cap",
                   "UpdateImageTypeId"),
    "rollback": (lambda c: cluster_capsule(c, monotonic_count=1), "/os.cap", "rollback"),
    "http-404": (None, "/missing.cap", "HTTP 404"),
    "download-timeout": (lambda c: cluster_capsule(c), "/slow/os.cap", "timed out"),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_failed_update_keeps_installed_os(cluster, capsule_server, case):
    build, path, expected = FAILURES[case]
    if build is not None:
        capsule_server.files["os.cap"] = build(cluster)
    before = cluster.dpu_os_version()
    task = cluster.simple_update(capsule_server.url + path)
    assert task["TaskState"] == "Exception"
    assert expected in task["Messages"][-1]["Message"]
    assert cluster.dpu_os_version() == before


def test_update_with_dpu_agent_down_ends_in_exception(cluster, capsule_server):
    capsule_server.files["os.cap"] = cluster_capsule(cluster)
    before = cluster.dpu_os_version()
    dpu_pid = PidRegistry(cluster.state).read()["dpu"].pid
    # A stopped process keeps its bus subscription but never replies, as a hung agent would.
    os.kill(dpu_pid, signal.SIGSTOP)
    try:
        task = cluster.simple_update(capsule_server.url + "/os.cap")
    finally:
        os.kill(dpu_pid, signal.SIGCONT)
    assert task["TaskState"] == "Exception"
    assert "h1-dpu is unavailable" in task["Messages"][-1]["Message"]
    assert cluster.dpu_os_version() == before


# ---- DMTF validators -------------------------------------------------------------------


def run_validator(cluster: Cluster, args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, REQUESTS_CA_BUNDLE=str(cluster.ca_file))
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=240, cwd=REPO)


def test_service_validator_passes(cluster, tmp_path):
    if not SCHEMA_DIR.is_dir():
        pytest.skip(f"DMTF CSDL schemas not found at {SCHEMA_DIR}")
    result = run_validator(cluster, [
        str(VENV_BIN / "rf_service_validator"), "--rhost", cluster.bmc_url, "-u", "admin",
        "-p", cluster.password, "--authtype", "Basic", "--skipschema",
        "--schema_directory", "../shared/redfish/csdl", "--logdir", str(tmp_path)])
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Fail: 0" in result.stdout


def test_protocol_validator_passes(cluster, tmp_path):
    result = run_validator(cluster, [
        str(VENV_BIN / "rf_protocol_validator"), "-r", cluster.bmc_url, "-u", "admin", "-p", cluster.password,
        "--report-dir", str(tmp_path), "--report-type", "tsv", "--ca-bundle", str(cluster.ca_file),
        "--avoid-http-redirect"])
    failures = [line for report in tmp_path.glob("*.tsv")
                for line in report.read_text().splitlines() if "\tFAIL\t" in line]
    assert failures == []
    assert result.returncode == 0, result.stdout[-3000:]
    assert "FAIL: 0" in result.stdout
