"""The Redfish service over the in-memory backend: protocol rules, auth, bad input, updates."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import ssl

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import agents.redfish as redfish
from agents import capsule

V1 = "/redfish/v1"


def basic(user_name: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user_name}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


ADMIN = basic("admin", "adminpass1")
OPERATOR = basic("operator", "operpass1")
READER = basic("reader", "readpass1")
CREDENTIALS = {
    "admin": ("adminpass1", "Administrator"),
    "operator": ("operpass1", "Operator"),
    "reader": ("readpass1", "ReadOnly"),
}
UPDATE_URI = f"{V1}/UpdateService/Actions/UpdateService.SimpleUpdate"
DPU_OS_URI = f"{V1}/UpdateService/FirmwareInventory/dpu0_os"
IMAGE = b"dpu management os image " * 512


@pytest.fixture(scope="module")
def root_identity():
    return capsule.generate_signing_identity("capsule root")


@pytest.fixture(scope="module")
def signer(root_identity):
    return capsule.generate_signing_identity("capsule signer", issuer=root_identity)


@pytest.fixture
def backend():
    return redfish.MemoryBackend()


@pytest.fixture
async def service(backend, root_identity):
    app = redfish.create_app(backend, credentials=CREDENTIALS,
                             trusted_capsule_cert=root_identity.cert, download_timeout_s=1.0)
    running = await redfish.serve(app, "127.0.0.1", 0)
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
async def client(service):
    async with aiohttp.ClientSession(base_url=service.url) as session:
        yield session


class FileServer:
    """Capsule file server over in-memory files; a name in `slow` responds after `delay_s`."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.slow: set[str] = set()
        self.delay_s = 5.0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name in self.slow:
            await asyncio.sleep(self.delay_s)
        if name not in self.files:
            raise web.HTTPNotFound()
        return web.Response(body=self.files[name], content_type="application/octet-stream")


@pytest.fixture
async def files():
    server = FileServer()
    app = web.Application()
    app.router.add_get("/images/{name}", server.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.base = f"http://127.0.0.1:{runner.addresses[0][1]}/images"
    try:
        yield server
    finally:
        await runner.cleanup()


def first_message_id(body: dict) -> str:
    return body["error"]["@Message.ExtendedInfo"][0]["MessageId"]


async def wait_for_task(client: aiohttp.ClientSession, monitor: str) -> dict:
    for _ in range(400):
        async with client.get(monitor, headers=ADMIN) as response:
            body = await response.json()
            if response.status == 200:
                return body
            assert response.status == 202
        await asyncio.sleep(0.02)
    raise AssertionError(f"task at {monitor} did not finish: {body}")


async def dpu_os_version(client: aiohttp.ClientSession) -> str:
    async with client.get(DPU_OS_URI, headers=ADMIN) as response:
        return (await response.json())["Version"]


# --- protocol basics ---------------------------------------------------------------------

async def test_redfish_exports_public_names():
    assert set(redfish.__all__) == {
        "RESET_TYPES", "TASK_STATES", "BackendUnavailable", "Dpu", "FirmwareComponent",
        "HostSystem", "InstallFailed", "MemoryBackend", "ProgressCallback", "RedfishBackend",
        "RedfishError", "RunningService", "create_app", "error_body", "format_fw_version",
        "message", "serve",
    }


async def test_version_document_is_public(client):
    async with client.get("/redfish") as response:
        assert response.status == 200
        assert await response.json() == {"v1": "/redfish/v1/"}


async def test_service_root_headers(client):
    async with client.get(f"{V1}/") as response:
        assert response.status == 200
        assert response.headers["OData-Version"] == "4.0"
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["Allow"] == "GET, HEAD"
        assert "ServiceRoot.v1_20_0.json>; rel=describedby" in response.headers["Link"]
        body = await response.json()
    assert body["Links"]["Sessions"] == {"@odata.id": f"{V1}/SessionService/Sessions"}


async def test_metadata_lists_served_schemas(client):
    async with client.get(f"{V1}/$metadata") as response:
        assert response.status == 200
        assert response.content_type == "application/xml"
        text = await response.text()
    assert 'Namespace="ComputerSystem.v1_27_0"' in text
    assert 'EntityContainer Name="Service"' in text


async def test_odata_document_names_services(client):
    async with client.get(f"{V1}/odata") as response:
        body = await response.json()
    assert body["@odata.context"] == "/redfish/v1/$metadata"
    assert {"name": "UpdateService", "kind": "Singleton", "url": f"{V1}/UpdateService"} in body["value"]


async def test_dpu_system_and_card_chassis(client):
    async with client.get(f"{V1}/Systems", headers=READER) as response:
        members = [m["@odata.id"] for m in (await response.json())["Members"]]
    assert members == [f"{V1}/Systems/host", f"{V1}/Systems/dpu0"]
    async with client.get(f"{V1}/Systems/dpu0", headers=READER) as response:
        dpu = await response.json()
    assert dpu["SystemType"] == "DPU"
    async with client.get(dpu["Links"]["Chassis"][0]["@odata.id"], headers=READER) as response:
        card = await response.json()
    assert card["ChassisType"] == "Card"
    assert card["Links"]["ComputerSystems"] == [{"@odata.id": f"{V1}/Systems/dpu0"}]


async def test_unknown_uri_returns_not_found(client):
    async with client.get(f"{V1}/Systems/nope", headers=READER) as response:
        assert response.status == 404
        assert first_message_id(await response.json()) == "Base.1.22.ResourceNotFound"


async def test_unsupported_method_returns_allow(client):
    async with client.put(f"{V1}/Systems", headers=ADMIN, json={}) as response:
        assert response.status == 405
        assert response.headers["Allow"] == "GET, HEAD"
        assert first_message_id(await response.json()) == "Base.1.22.OperationNotAllowed"


async def test_unsupported_odata_version_returns_412(client):
    async with client.get(f"{V1}/", headers={"OData-Version": "5.0"}) as response:
        assert response.status == 412
        assert first_message_id(await response.json()) == "Base.1.22.HeaderInvalid"


async def test_unsupported_query_returns_501(client):
    async with client.get(f"{V1}/Systems?$expand=*", headers=READER) as response:
        assert response.status == 501
        assert first_message_id(await response.json()) == "Base.1.22.QueryNotSupported"


# --- authentication and roles ------------------------------------------------------------

async def test_missing_credentials_return_401(client):
    async with client.get(f"{V1}/Systems") as response:
        assert response.status == 401
        assert "WWW-Authenticate" in response.headers
        assert first_message_id(await response.json()) == "Base.1.22.NoValidSession"


async def test_wrong_password_returns_401(client):
    async with client.get(f"{V1}/Systems", headers=basic("admin", "wrong-pass")) as response:
        assert response.status == 401
        assert first_message_id(await response.json()) == "Base.1.22.NoValidSession"


async def test_garbled_basic_header_returns_401(client):
    async with client.get(f"{V1}/Systems", headers={"Authorization": "Basic %%%"}) as response:
        assert response.status == 401


async def test_session_token_grants_access(client):
    login = {"UserName": "reader", "Password": "readpass1"}
    async with client.post(f"{V1}/SessionService/Sessions", json=login) as response:
        assert response.status == 201
        token = response.headers["X-Auth-Token"]
        location = response.headers["Location"]
    async with client.get(f"{V1}/Systems", headers={"X-Auth-Token": token}) as response:
        assert response.status == 200
    async with client.delete(location, headers={"X-Auth-Token": token}) as response:
        assert response.status == 204
    async with client.get(f"{V1}/Systems", headers={"X-Auth-Token": token}) as response:
        assert response.status == 401


async def test_session_rejects_wrong_password(client):
    login = {"UserName": "reader", "Password": "nope-nope"}
    async with client.post(f"{V1}/SessionService/Sessions", json=login) as response:
        assert response.status == 401
        assert first_message_id(await response.json()) == "Base.1.22.NoValidSession"


async def test_readonly_cannot_reset(client, backend):
    uri = f"{V1}/Systems/host/Actions/ComputerSystem.Reset"
    async with client.post(uri, headers=READER, json={"ResetType": "ForceOff"}) as response:
        assert response.status == 403
        assert first_message_id(await response.json()) == "Base.1.22.InsufficientPrivilege"
    assert backend.resets == []


async def test_readonly_cannot_create_account(client):
    new = {"UserName": "eve", "Password": "evepass12", "RoleId": "Administrator"}
    async with client.post(f"{V1}/AccountService/Accounts", headers=READER, json=new) as response:
        assert response.status == 403


async def test_roles_are_predefined(client):
    async with client.get(f"{V1}/AccountService/Roles", headers=READER) as response:
        members = [m["@odata.id"].rsplit("/", 1)[1] for m in (await response.json())["Members"]]
    assert members == ["Administrator", "Operator", "ReadOnly"]


async def test_account_create_then_login(client):
    new = {"UserName": "carol", "Password": "carolpass1", "RoleId": "Operator"}
    async with client.post(f"{V1}/AccountService/Accounts", headers=ADMIN, json=new) as response:
        assert response.status == 201
        assert (await response.json())["RoleId"] == "Operator"
    async with client.get(f"{V1}/Systems", headers=basic("carol", "carolpass1")) as response:
        assert response.status == 200


async def test_account_duplicate_returns_409(client):
    new = {"UserName": "reader", "Password": "whatever1", "RoleId": "ReadOnly"}
    async with client.post(f"{V1}/AccountService/Accounts", headers=ADMIN, json=new) as response:
        assert response.status == 409
        assert first_message_id(await response.json()) == "Base.1.22.ResourceAlreadyExists"


async def test_account_patch_with_matching_etag(client):
    uri = f"{V1}/AccountService/Accounts/3"
    async with client.get(uri, headers=ADMIN) as response:
        etag = response.headers["ETag"]
        assert (await response.json())["@odata.etag"] == etag
    async with client.patch(uri, json={"RoleId": "Operator"}, headers={**ADMIN, "If-Match": etag}) as response:
        assert response.status == 200
        assert response.headers["ETag"] != etag
        assert (await response.json())["RoleId"] == "Operator"


async def test_account_patch_with_stale_etag_returns_412(client):
    uri = f"{V1}/AccountService/Accounts/3"
    async with client.patch(uri, json={"RoleId": "Operator"}, headers={**ADMIN, "If-Match": '"stale"'}) as response:
        assert response.status == 412
        assert first_message_id(await response.json()) == "Base.1.22.PreconditionFailed"
    async with client.get(uri, headers=ADMIN) as response:
        assert (await response.json())["RoleId"] == "ReadOnly"


async def test_get_with_current_etag_returns_304(client):
    uri = f"{V1}/AccountService/Accounts/1"
    async with client.get(uri, headers=ADMIN) as response:
        etag = response.headers["ETag"]
    async with client.get(uri, headers={**ADMIN, "If-None-Match": etag}) as response:
        assert response.status == 304


async def test_readonly_changes_own_password(client):
    uri = f"{V1}/AccountService/Accounts/3"
    async with client.patch(uri, headers=READER, json={"Password": "newreadpass"}) as response:
        assert response.status == 200
    async with client.get(f"{V1}/Systems", headers=basic("reader", "newreadpass")) as response:
        assert response.status == 200


async def test_readonly_cannot_change_own_role(client):
    uri = f"{V1}/AccountService/Accounts/3"
    async with client.patch(uri, headers=READER, json={"RoleId": "Administrator"}) as response:
        assert response.status == 403


# --- bad input ---------------------------------------------------------------------------

RESET_URI = f"{V1}/Systems/host/Actions/ComputerSystem.Reset"


@pytest.mark.parametrize("body, status, message_id", [
    (b"{not json", 400, "Base.1.22.MalformedJSON"),
    (b"[1, 2]", 400, "Base.1.22.MalformedJSON"),
    (b'{"ResetType": "On", "Force": true}', 400, "Base.1.22.ActionParameterUnknown"),
    (b'{"ResetType": 5}', 400, "Base.1.22.ActionParameterValueTypeError"),
    (b'{"ResetType": "Nmi"}', 400, "Base.1.22.ActionParameterValueNotInList"),
    (b"{}", 400, "Base.1.22.ActionParameterMissing"),
])
async def test_reset_rejects_bad_body(client, backend, body, status, message_id):
    async with client.post(RESET_URI, data=body, headers={**OPERATOR, "Content-Type": "application/json"}) as response:
        assert response.status == status
        assert first_message_id(await response.json()) == message_id
    assert backend.resets == []


async def test_oversized_body_returns_413(client):
    body = json.dumps({"ResetType": "On", "Pad": "x" * 100_000})
    async with client.post(RESET_URI, data=body, headers={**OPERATOR, "Content-Type": "application/json"}) as response:
        assert response.status == 413
        assert first_message_id(await response.json()) == "Base.1.22.PayloadTooLarge"


async def test_account_rejects_unknown_property(client):
    new = {"UserName": "dave", "Password": "davepass1", "RoleId": "Operator", "Shoe": 9}
    async with client.post(f"{V1}/AccountService/Accounts", headers=ADMIN, json=new) as response:
        assert response.status == 400
        assert first_message_id(await response.json()) == "Base.1.22.PropertyUnknown"


async def test_account_rejects_wrong_type(client):
    uri = f"{V1}/AccountService/Accounts/2"
    async with client.patch(uri, headers=ADMIN, json={"Enabled": "yes"}) as response:
        assert response.status == 400
        assert first_message_id(await response.json()) == "Base.1.22.PropertyValueTypeError"


async def test_simple_update_rejects_ftp_uri(client):
    body = {"ImageURI": "ftp://127.0.0.1/x.cap", "Targets": [DPU_OS_URI]}
    async with client.post(UPDATE_URI, headers=ADMIN, json=body) as response:
        assert response.status == 400
        assert first_message_id(await response.json()) == "Base.1.22.ActionParameterValueFormatError"


async def test_simple_update_rejects_unknown_target(client):
    body = {"ImageURI": "http://127.0.0.1/x.cap", "Targets": [f"{V1}/UpdateService/FirmwareInventory/BMC"]}
    async with client.post(UPDATE_URI, headers=ADMIN, json=body) as response:
        assert response.status == 400
        assert first_message_id(await response.json()) == "Base.1.22.ActionParameterValueNotInList"


# --- Reset -------------------------------------------------------------------------------

@pytest.mark.parametrize("reset_type, power", [
    ("ForceOff", "Off"), ("GracefulShutdown", "Off"), ("On", "On"), ("ForceRestart", "On"),
])
async def test_reset_drives_host_power(client, backend, reset_type, power):
    async with client.post(RESET_URI, headers=OPERATOR, json={"ResetType": reset_type}) as response:
        assert response.status == 204
    assert backend.resets == [reset_type]
    async with client.get(f"{V1}/Systems/host", headers=READER) as response:
        assert (await response.json())["PowerState"] == power


async def test_reset_with_backend_down_returns_503(client, backend):
    backend.available = False
    async with client.post(RESET_URI, headers=OPERATOR, json={"ResetType": "On"}) as response:
        assert response.status == 503
        assert first_message_id(await response.json()) == "Base.1.22.ServiceTemporarilyUnavailable"


# --- SimpleUpdate ------------------------------------------------------------------------

def make_capsule(signer, count: int = 2, fw_version: int = 0x0200_0001, **kwargs) -> bytes:
    return capsule.build_capsule(IMAGE, fw_version=fw_version, monotonic_count=count,
                                 signer_cert=signer.cert, signer_key=signer.key, **kwargs)


async def start_update(client, image_uri: str) -> tuple[dict, str]:
    body = {"ImageURI": image_uri, "TransferProtocol": "HTTP", "Targets": [DPU_OS_URI]}
    async with client.post(UPDATE_URI, headers=OPERATOR, json=body) as response:
        assert response.status == 202
        monitor = response.headers["Location"]
        accepted = await response.json()
    assert accepted["TaskState"] in redfish.TASK_STATES
    return accepted, monitor


async def test_update_completes_and_shows_version(client, files, signer):
    files.files["good.cap"] = make_capsule(signer)
    _, monitor = await start_update(client, f"{files.base}/good.cap")
    task = await wait_for_task(client, monitor)
    assert task["TaskState"] == "Completed"
    assert task["PercentComplete"] == 100
    assert task["Messages"][-1]["MessageId"] == "Update.1.3.UpdateSuccessful"
    assert await dpu_os_version(client) == "2.0.1"


async def test_update_task_listed_in_task_service(client, files, signer):
    files.files["good.cap"] = make_capsule(signer)
    accepted, monitor = await start_update(client, f"{files.base}/good.cap")
    await wait_for_task(client, monitor)
    async with client.get(f"{V1}/TaskService/Tasks", headers=READER) as response:
        members = [m["@odata.id"] for m in (await response.json())["Members"]]
    assert accepted["@odata.id"] in members


async def test_update_reports_intermediate_progress(client, files, signer, backend):
    backend.install_step_delay_s = 0.2
    files.files["good.cap"] = make_capsule(signer)
    _, monitor = await start_update(client, f"{files.base}/good.cap")
    seen = set()
    for _ in range(200):
        async with client.get(monitor, headers=ADMIN) as response:
            body = await response.json()
        seen.add((body["TaskState"], body["PercentComplete"]))
        if body["TaskState"] == "Completed":
            break
        await asyncio.sleep(0.02)
    assert any(state == "Running" and 0 < percent < 100 for state, percent in seen)
    assert ("Completed", 100) in seen


async def expect_failed_update(client, image_uri: str, message_id: str) -> dict:
    before = await dpu_os_version(client)
    _, monitor = await start_update(client, image_uri)
    task = await wait_for_task(client, monitor)
    assert task["TaskState"] == "Exception"
    assert task["TaskStatus"] == "Critical"
    assert task["Messages"][-1]["MessageId"] == message_id
    assert await dpu_os_version(client) == before
    return task


async def test_update_rejects_untrusted_signature(client, files):
    stranger = capsule.generate_signing_identity("stranger")
    files.files["bad.cap"] = make_capsule(stranger)
    task = await expect_failed_update(client, f"{files.base}/bad.cap", "Update.1.3.VerificationFailed")
    assert "not issued by the trusted" in task["Messages"][-1]["Message"]


async def test_update_rejects_wrong_image_type(client, files, signer):
    files.files["other.cap"] = make_capsule(signer, update_image_type_id=capsule.FMP_CAPSULE_GUID)
    await expect_failed_update(client, f"{files.base}/other.cap", "Update.1.3.UpdateNotApplicable")


async def test_update_rejects_rollback(client, files, signer):
    files.files["old.cap"] = make_capsule(signer, count=1)
    task = await expect_failed_update(client, f"{files.base}/old.cap",
                                      "Update.1.3.UpdateSkippedVersionTooLow")
    assert "rollback" in task["Messages"][-1]["Message"]


async def test_update_rejects_truncated_capsule(client, files, signer):
    files.files["cut.cap"] = make_capsule(signer)[:-10]
    await expect_failed_update(client, f"{files.base}/cut.cap", "Update.1.3.VerificationFailed")


async def test_update_fails_on_http_404(client, files):
    task = await expect_failed_update(client, f"{files.base}/missing.cap", "Update.1.3.TransferFailed")
    assert "HTTP 404" in task["Messages"][-1]["Message"]


async def test_update_fails_on_download_timeout(client, files, signer):
    files.files["slow.cap"] = make_capsule(signer)
    files.slow.add("slow.cap")
    task = await expect_failed_update(client, f"{files.base}/slow.cap", "Update.1.3.TransferFailed")
    assert "timed out" in task["Messages"][-1]["Message"]


async def test_update_fails_on_install_error(client, files, signer, backend):
    backend.fail_install_reason = "flash write error"
    files.files["good.cap"] = make_capsule(signer)
    task = await expect_failed_update(client, f"{files.base}/good.cap", "Update.1.3.ApplyFailed")
    assert "flash write error" in task["Messages"][-1]["Message"]


async def test_update_fails_when_backend_down(client, files, signer, backend):
    files.files["good.cap"] = make_capsule(signer)
    _, monitor = await start_update(client, f"{files.base}/good.cap")
    backend.available = False
    task = await wait_for_task(client, monitor)
    backend.available = True
    assert task["TaskState"] == "Exception"
    assert task["Messages"][-1]["MessageId"] == "Update.1.3.ApplyFailed"
    assert await dpu_os_version(client) == "1.0.0"


async def test_update_accepts_edk2_built_capsule(client, files, signer):
    from edk2toollib.uefi.edk2.fmp_payload_header import FmpPayloadHeaderClass
    from edk2toollib.uefi.fmp_auth_header import FmpAuthHeaderClass
    from edk2toollib.uefi.fmp_capsule_header import FmpCapsuleHeaderClass, FmpCapsuleImageHeaderClass
    from edk2toollib.uefi.uefi_capsule_header import UefiCapsuleHeaderClass

    payload = FmpPayloadHeaderClass()
    payload.FwVersion = 0x0300_0000
    payload.Payload = IMAGE
    auth = FmpAuthHeaderClass()
    auth.MonotonicCount = 5
    auth.AuthInfo.cert_data = capsule.sign_payload(payload.Encode(), 5, signer.cert, signer.key)
    auth.FmpPayloadHeader = payload
    image_header = FmpCapsuleImageHeaderClass()
    image_header.UpdateImageTypeId = capsule.DPU_MGMT_OS_IMAGE_TYPE_ID
    image_header.UpdateImageIndex = 1
    image_header.FmpAuthHeader = auth
    fmp = FmpCapsuleHeaderClass()
    fmp.AddFmpCapsuleImageHeader(image_header)
    header = UefiCapsuleHeaderClass()
    header.FmpCapsuleHeader = fmp
    files.files["edk2.cap"] = header.Encode()

    _, monitor = await start_update(client, f"{files.base}/edk2.cap")
    task = await wait_for_task(client, monitor)
    assert task["TaskState"] == "Completed"
    assert await dpu_os_version(client) == "3.0.0"


def make_tls_identity(tmp_path):
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
    from cryptography.hazmat.primitives import serialization
    cert_path = tmp_path / "tls.pem"
    key_path = tmp_path / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_update_downloads_over_https(tmp_path, backend, root_identity, signer):
    cert_path, key_path = make_tls_identity(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_path, key_path)
    client_tls = ssl.create_default_context(cafile=str(cert_path))
    data = make_capsule(signer, count=3, fw_version=0x0400_0000)

    async def serve_file(request: web.Request) -> web.Response:
        return web.Response(body=data)

    image_app = web.Application()
    image_app.router.add_get("/os.cap", serve_file)
    image_runner = web.AppRunner(image_app)
    await image_runner.setup()
    await web.TCPSite(image_runner, "127.0.0.1", 0, ssl_context=server_tls).start()
    image_port = image_runner.addresses[0][1]
    app = redfish.create_app(backend, credentials=CREDENTIALS,
                             trusted_capsule_cert=root_identity.cert, download_ssl=client_tls)
    service = await redfish.serve(app)
    try:
        async with aiohttp.ClientSession(base_url=service.url) as client:
            body = {"ImageURI": f"https://127.0.0.1:{image_port}/os.cap",
                    "TransferProtocol": "HTTPS", "Targets": [DPU_OS_URI]}
            async with client.post(UPDATE_URI, headers=ADMIN, json=body) as response:
                monitor = response.headers["Location"]
            task = await wait_for_task(client, monitor)
            assert task["TaskState"] == "Completed"
            assert await dpu_os_version(client) == "4.0.0"
    finally:
        await service.close()
        await image_runner.cleanup()


# --- events ------------------------------------------------------------------------------

async def test_sse_stream_carries_task_events(client, files, signer):
    files.files["good.cap"] = make_capsule(signer)
    token = base64.b64encode(b"reader:readpass1").decode()
    async with client.get(f"{V1}/EventService/SSE", headers={"Authorization": f"Basic {token}"}) as stream:
        assert stream.status == 200
        assert stream.content_type == "text/event-stream"
        await stream.content.readline()
        _, monitor = await start_update(client, f"{files.base}/good.cap")
        message_ids = []
        while "TaskEvent.1.0.TaskCompletedOK" not in message_ids:
            line = (await asyncio.wait_for(stream.content.readline(), 10)).decode()
            if line.startswith("data: "):
                message_ids.append(json.loads(line[6:])["Events"][0]["MessageId"])
    assert message_ids[0] == "TaskEvent.1.0.TaskStarted"
    assert "TaskEvent.1.0.TaskProgressChanged" in message_ids


async def test_concurrent_patches_with_same_etag(client):
    uri = f"{V1}/AccountService/Accounts/2"
    async with client.get(uri, headers=ADMIN) as response:
        etag = response.headers["ETag"]

    async def patch(role_id: str) -> int:
        async with client.patch(uri, json={"RoleId": role_id},
                                headers={**ADMIN, "If-Match": etag}) as response:
            return response.status

    roles = ["Administrator", "ReadOnly", "Administrator", "ReadOnly"]
    statuses = await asyncio.gather(*(patch(role_id) for role_id in roles))
    assert sorted(statuses) == [200, 412, 412, 412]


async def test_update_sends_download_credentials(client, signer):
    data = make_capsule(signer)
    seen_authorization = []

    async def serve_protected(request: web.Request) -> web.Response:
        seen_authorization.append(request.headers.get("Authorization"))
        return web.Response(body=data)

    image_app = web.Application()
    image_app.router.add_get("/os.cap", serve_protected)
    image_runner = web.AppRunner(image_app)
    await image_runner.setup()
    await web.TCPSite(image_runner, "127.0.0.1", 0).start()
    try:
        body = {"ImageURI": f"http://127.0.0.1:{image_runner.addresses[0][1]}/os.cap",
                "Targets": [DPU_OS_URI], "Username": "fetch", "Password": "fetchpass"}
        async with client.post(UPDATE_URI, headers=OPERATOR, json=body) as response:
            monitor = response.headers["Location"]
        task = await wait_for_task(client, monitor)
    finally:
        await image_runner.cleanup()
    assert task["TaskState"] == "Completed"
    assert seen_authorization == [basic("fetch", "fetchpass")["Authorization"]]


async def test_operator_cannot_delete_account(client):
    async with client.delete(f"{V1}/AccountService/Accounts/3", headers=OPERATOR) as response:
        assert response.status == 403
    async with client.get(f"{V1}/AccountService/Accounts/3", headers=ADMIN) as response:
        assert response.status == 200


async def test_admin_deletes_account_and_sessions(client):
    login = {"UserName": "reader", "Password": "readpass1"}
    async with client.post(f"{V1}/SessionService/Sessions", json=login) as response:
        token = response.headers["X-Auth-Token"]
    async with client.delete(f"{V1}/AccountService/Accounts/3", headers=ADMIN) as response:
        assert response.status == 204
    async with client.get(f"{V1}/Systems", headers={"X-Auth-Token": token}) as response:
        assert response.status == 401
