"""DPU provisioning without a bus: the image catalog, the DPU's install checks, its A/B store, the counter."""

from __future__ import annotations

import io
import tarfile
import uuid

import pytest

from agents import capsule
from agents._capsule_keys import (
    ensure_capsule_keys,
    load_signer,
    load_trusted_cert,
    next_monotonic_count,
)
from agents._config import ConfigError
from agents.dpu._os import (
    FACTORY_OS,
    InstalledOs,
    InstallRejected,
    OsStore,
    boot_version,
    check_capsule,
    parse_os_release,
)
from agents.host._dpu_catalog import (
    CatalogError,
    ImageNotFound,
    choose_image,
    fw_version_of,
    load_catalog,
)

FACTORY = InstalledOs(**FACTORY_OS)


def os_image(version_id: str | None) -> bytes:
    files = {"etc/hostname": b"dpu\n"}
    if version_id is not None:
        files["etc/os-release"] = f'NAME="test OS"\nVERSION_ID="{version_id}"\n'.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    ensure_capsule_keys(state)
    return state, load_trusted_cert(state), load_signer(state)


def signed(signer, image=b"x", monotonic_count=2, **options) -> bytes:
    return capsule.build_capsule(image, fw_version=fw_version_of("2.2.0"), monotonic_count=monotonic_count,
                                 signer_cert=signer.cert, signer_key=signer.key, **options)


# ---- catalog ---------------------------------------------------------------------


def test_catalog_images_match_their_files():
    catalog = load_catalog()
    assert {image.model for image in catalog} == {"BlueField-3", "BlueField-2"}
    for image in catalog:
        data = image.read()
        assert boot_version(data, image.fw_version) == image.version


def test_choose_image_picks_newest_for_model():
    image = choose_image(load_catalog(), "BlueField-3")
    assert image.name == "bf3-mgmt-os-2.2.0"


def test_choose_image_by_name():
    image = choose_image(load_catalog(), "BlueField-3", "bf3-mgmt-os-2.1.0")
    assert image.version == "2.1.0"


def test_choose_image_rejects_other_model():
    with pytest.raises(ImageNotFound) as caught:
        choose_image(load_catalog(), "BlueField-3", "bf2-mgmt-os-1.9.0")
    assert caught.value.available == ["bf3-mgmt-os-2.1.0", "bf3-mgmt-os-2.2.0"]


def test_choose_image_unknown_model():
    with pytest.raises(ImageNotFound):
        choose_image(load_catalog(), "Pensando")


def test_catalog_rejects_changed_image(tmp_path):
    source = load_catalog()[0]
    (tmp_path / "catalog.json").write_text(
        '{"images": [{"name": "a", "model": "m", "version": "1.0.0", "file": "a.tar", "sha256": "%s"}]}'
        % source.sha256)
    (tmp_path / "a.tar").write_bytes(source.read() + b"\0")
    with pytest.raises(CatalogError, match="does not match"):
        load_catalog(tmp_path)[0].read()


@pytest.mark.parametrize("version", ["2.1", "2.x.0", "256.0.0", "1.0.65536"])
def test_fw_version_rejects_bad_version(version):
    with pytest.raises(CatalogError):
        fw_version_of(version)


def test_fw_version_encoding():
    assert fw_version_of("2.2.7") == 0x0202_0007


# ---- DPU install checks ----------------------------------------------------------


def test_check_capsule_accepts_cluster_signed(keys):
    _state, trusted, signer = keys
    decoded = check_capsule(signed(signer, monotonic_count=5), FACTORY, trusted)
    assert decoded.monotonic_count == 5


def test_check_capsule_rejects_foreign_signer(keys):
    _state, trusted, _signer = keys
    foreign = capsule.generate_signing_identity("someone else")
    with pytest.raises(InstallRejected) as caught:
        check_capsule(signed(foreign), FACTORY, trusted)
    assert caught.value.check == "signature"


def test_check_capsule_rejects_wrong_image_type(keys):
    _state, trusted, signer = keys
    with pytest.raises(InstallRejected) as caught:
        check_capsule(signed(signer, update_image_type_id=uuid.uuid4()), FACTORY, trusted)
    assert caught.value.check == "image-type"


def test_check_capsule_rejects_rollback(keys):
    _state, trusted, signer = keys
    installed = InstalledOs("2.2.0", fw_version_of("2.2.0"), 7, "x", "b")
    with pytest.raises(InstallRejected) as caught:
        check_capsule(signed(signer, monotonic_count=7), installed, trusted)
    assert caught.value.check == "monotonic-count"


def test_check_capsule_rejects_older_version(keys):
    _state, trusted, signer = keys
    installed = InstalledOs("2.2.0", fw_version_of("2.2.0"), 7, "x", "b", lowest_supported_version=fw_version_of("2.2.0"))
    older = capsule.build_capsule(b"x", fw_version=fw_version_of("2.1.0"), monotonic_count=8,
                                  signer_cert=signer.cert, signer_key=signer.key)
    with pytest.raises(InstallRejected) as caught:
        check_capsule(older, installed, trusted)
    assert caught.value.check == "version"
    assert "2.1.0" in caught.value.reason


def test_check_capsule_accepts_same_version_again(keys):
    _state, trusted, signer = keys
    installed = InstalledOs("2.2.0", fw_version_of("2.2.0"), 7, "x", "b", lowest_supported_version=fw_version_of("2.2.0"))
    decoded = check_capsule(signed(signer, monotonic_count=8), installed, trusted)
    assert decoded.monotonic_count == 8


def test_check_capsule_rejects_truncated(keys):
    _state, trusted, signer = keys
    with pytest.raises(InstallRejected) as caught:
        check_capsule(signed(signer)[:-10], FACTORY, trusted)
    assert caught.value.check == "format"


def test_boot_rejects_version_mismatch():
    with pytest.raises(InstallRejected, match="VERSION_ID '2.1.0'"):
        boot_version(os_image("2.1.0"), fw_version_of("2.2.0"))


def test_boot_rejects_image_without_os_release():
    with pytest.raises(InstallRejected, match="no etc/os-release"):
        boot_version(os_image(None), fw_version_of("2.2.0"))


def test_boot_rejects_non_archive():
    with pytest.raises(InstallRejected, match="not a readable OS archive"):
        boot_version(b"not a tar archive" * 40, fw_version_of("2.2.0"))


def test_parse_os_release_strips_quotes_and_comments():
    fields = parse_os_release('# comment\nNAME="A B"\nVERSION_ID=\'1.2.3\'\nbroken line\n')
    assert fields == {"NAME": "A B", "VERSION_ID": "1.2.3"}


# ---- store and counter -----------------------------------------------------------


def test_store_starts_with_factory_os(tmp_path):
    assert OsStore(tmp_path, "h1-dpu").load() == FACTORY


def test_store_commit_switches_slot(tmp_path):
    store = OsStore(tmp_path, "h1-dpu")
    store.write_slot(FACTORY.other_slot, b"image")
    store.commit(InstalledOs("2.2.0", fw_version_of("2.2.0"), 3, "img", FACTORY.other_slot))
    reloaded = OsStore(tmp_path, "h1-dpu").load()
    assert reloaded.slot == "b"
    assert reloaded.monotonic_count == 3
    assert store.slot("b").read_bytes() == b"image"


def test_store_rejects_corrupt_record(tmp_path):
    store = OsStore(tmp_path, "h1-dpu")
    store.root.mkdir(parents=True)
    store.record.write_text("{not json")
    with pytest.raises(ConfigError, match="invalid installed-OS record"):
        store.load()


def test_monotonic_count_increases_from_factory(tmp_path):
    assert [next_monotonic_count(tmp_path) for _ in range(3)] == [2, 3, 4]


def test_monotonic_count_rejects_corrupt_counter(tmp_path):
    next_monotonic_count(tmp_path)
    (tmp_path / "keys" / "capsule" / "monotonic-count").write_text("seven\n")
    with pytest.raises(ConfigError, match="invalid MonotonicCount counter"):
        next_monotonic_count(tmp_path)
