"""`dcfleet keys init`, `image build`, `boot provision` and `boot verify` as a user runs them."""

import subprocess

import pytest

from _support import REPO, dcfleet_command

SOURCES = REPO / "agents" / "data" / "bootsrc"
MODULES = ("net-driver", "storage-driver", "vmx", "vsan")


def dcfleet(*args):
    return subprocess.run(dcfleet_command(*args), capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("boot-cli")
    keys, bank, state = root / "keys", root / "bank", root / "host-state"
    init = dcfleet("keys", "init", "--dir", str(keys), "--state-dir", str(root / "cluster"))
    assert init.returncode == 0, init.stderr
    build = dcfleet("image", "build", str(SOURCES), "--out", str(bank), "--keys", str(keys))
    assert build.returncode == 0, build.stderr
    provision = dcfleet("boot", "provision", "--state", str(state), "--host", "lab1", "--keys", str(keys))
    assert provision.returncode == 0, provision.stderr
    return keys, bank, state


def test_keys_init_writes_roles_and_databases(built):
    keys, _, _ = built
    for role in ("firmware", "loader", "vendor", "owner"):
        assert (keys / f"{role}.key.pem").is_file()
        assert (keys / f"{role}.crt.pem").is_file()
    assert (keys / "db.esl").stat().st_size > 0


def test_keys_init_never_overwrites(built):
    keys, _, _ = built
    again = dcfleet("keys", "init", "--dir", str(keys))
    assert again.returncode == 2
    assert "already exists" in again.stderr


def test_boot_verify_passes_fresh_bank(built):
    _, bank, state = built
    result = dcfleet("boot", "verify", str(bank), "--state", str(state))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS: 8 files verified, 4 modules" in result.stdout
    assert "loader.img                       loader   firmware    db        ed25519     1" in result.stdout
    assert "PCR  7" in result.stdout


@pytest.mark.parametrize("module", MODULES)
def test_boot_verify_names_module_after_flipped_byte(built, tmp_path, module):
    keys, _, state = built
    bank = tmp_path / "bank"
    assert dcfleet("image", "build", str(SOURCES), "--out", str(bank), "--keys", str(keys)).returncode == 0
    image = bank / "modules" / f"{module}.img"
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0x01
    image.write_bytes(bytes(data))
    result = dcfleet("boot", "verify", str(bank), "--state", str(state))
    assert result.returncode == 1
    assert f"FAIL modules/{module}.img: signature check failed" in result.stdout
    assert f"modules/{module}.img failed the signature check" in result.stderr


def test_image_build_rejects_missing_sources(built, tmp_path):
    keys, _, _ = built
    (tmp_path / "src").mkdir()
    result = dcfleet("image", "build", str(tmp_path / "src"), "--out", str(tmp_path / "bank"), "--keys", str(keys))
    assert result.returncode == 2
    assert "loader: missing" in result.stderr


def test_image_build_rejects_bad_generation(built, tmp_path):
    keys, _, _ = built
    result = dcfleet("image", "build", str(SOURCES), "--out", str(tmp_path / "bank"), "--keys", str(keys),
                     "--generation", "vmx=two")
    assert result.returncode == 2
    assert "invalid --generation 'vmx=two'" in result.stderr


def test_boot_verify_rejects_empty_bank(built, tmp_path):
    _, _, state = built
    (tmp_path / "empty").mkdir()
    result = dcfleet("boot", "verify", str(tmp_path / "empty"), "--state", str(state))
    assert result.returncode == 1
    assert "format check failed: boot bank is empty" in result.stdout
