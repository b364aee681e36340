"""The precopy state machine, whole simulated migrations, statistics and the model."""

import pytest

import agents.migration_core as migration_core
from agents.migration_core import (
    DATA_RECORD_SIZE_BYTES,
    PAGE_SIZE_BYTES,
    AllocatedPageMap,
    ArenaFrameStore,
    FrameError,
    GuestMemory,
    GuestWorkload,
    HostMemory,
    MachineCheck,
    PassReport,
    PrecopyConfig,
    PrecopySource,
    SendPass,
    StopAndCopy,
    WrongMigrationState,
    populate,
    predict_precopy,
    simulate_migration,
)

KNOWN_BAD_PAGES = (11, 200, 333, 517, 640, 777, 901, 1020)
LATENT_PAGES = (45, 420, 700, 1001)


def make_vm(page_count, vm_id="vm-1", frame_count=None):
    host = HostMemory(frame_count or page_count + 64)
    return GuestMemory(vm_id, host, AllocatedPageMap.allocate(host, page_count))


def make_source_with_errors(page_count=1024):
    source = make_vm(page_count)
    populate(source, seed=7, nonzero_fraction=0.6)
    for page in KNOWN_BAD_PAGES:
        source.host.errors.inject(source.host_frame(page))
    for page in LATENT_PAGES:
        source.host.errors.inject(source.host_frame(page), latent=True)
    return source


def migrate_with_workload(source, destination, **config):
    # A 20 ms limit at 40 MB/s fits 195 pages, fewer than the first pass leaves dirty.
    config.setdefault("downtime_limit_s", 0.02)
    workload = GuestWorkload(source, seed=11, max_dirty_rate_pages_per_s=8000)
    return simulate_migration(
        source,
        destination,
        bandwidth_bytes_per_s=40e6,
        workload=workload,
        cpu_demand=0.6,
        config=PrecopyConfig(**config),
    )


def test_public_surface():
    assert set(migration_core.__all__) == {
        "DATA_RECORD_SIZE_BYTES", "DEFAULT_RECORDS_PER_BATCH", "PAGE_SIZE_BYTES", "WIRE_VERSION",
        "AllocatedPageMap", "AppliedBatch", "ArenaFrameStore", "Completed", "EncodedBatch", "FrameError",
        "FrameOutOfRange", "FrameStore", "SparseFrameStore",
        "GuestMemory", "GuestPageMap", "GuestPageOutOfRange", "GuestWorkload", "HostMemory", "MachineCheck",
        "MalformedPageBatch", "MemoryErrorMap", "MigrationStats", "OutOfHostFrames", "PageKind", "PageRecord",
        "PassReport", "PrecopyConfig", "PrecopyDestination", "PrecopyPrediction", "PrecopySource", "SafeRead",
        "SendPass", "SimulatedMigration", "StopAndCopy", "WorkloadTick", "WrongMigrationState", "apply_batch",
        "decode_batch", "encode_batch", "encode_pages", "page_content", "populate", "predict_precopy",
        "simulate_migration", "AckOutOfRange", "CreditWindow", "PageChecksums", "ZERO_PAGE_CHECKSUM",
        "digest_checksums", "page_checksum", "NO_CHECKSUM",
    }
    for name in migration_core.__all__:
        assert hasattr(migration_core, name), name


def test_migration_copies_every_healthy_page():
    source = make_source_with_errors()
    destination = make_vm(1024, frame_count=4096)
    result = migrate_with_workload(source, destination)
    assert result.stats.status == "completed"
    assert result.passes >= 3
    assert result.stats.dirty_sync_count == result.passes - 1
    source_digests = source.page_digests()
    destination_digests = destination.page_digests()
    assert len(destination_digests) == 1024 - 12
    assert destination_digests == source_digests


def test_migration_poisons_injected_and_discovered_pages():
    source = make_source_with_errors()
    destination = make_vm(1024)
    result = migrate_with_workload(source, destination)
    expected = set(KNOWN_BAD_PAGES) | set(LATENT_PAGES)
    assert result.source_poisoned_pages == expected
    assert result.destination_poisoned_pages == expected
    assert destination.poisoned_pages() == expected
    assert result.stats.poisoned_pages == 12
    assert result.stats.to_query_migrate()["ram"]["poisoned-pages"] == 12


def test_migration_discovers_latent_error_during_copy():
    source = make_source_with_errors()
    destination = make_vm(1024)
    result = migrate_with_workload(source, destination)
    assert result.discovered_error_pages == set(LATENT_PAGES)
    for page in LATENT_PAGES:
        assert source.host.errors.state(source.host_frame(page)) is FrameError.UNCORRECTABLE
    assert source.host.errors.latent_frames() == frozenset()


def test_guest_read_of_poisoned_page_after_migration_raises():
    source = make_source_with_errors()
    destination = make_vm(1024, vm_id="vm-1")
    migrate_with_workload(source, destination)
    with pytest.raises(MachineCheck) as caught:
        destination.read(LATENT_PAGES[0])
    assert caught.value.vm_id == "vm-1"
    assert caught.value.guest_page == LATENT_PAGES[0]
    assert destination.read(12) == source.read(12)


def test_migration_between_arena_stores():
    source_host = HostMemory(1100, ArenaFrameStore(1100))
    source = GuestMemory("vm-1", source_host, AllocatedPageMap.allocate(source_host, 1024))
    populate(source, seed=7, nonzero_fraction=0.6)
    for page in KNOWN_BAD_PAGES:
        source_host.errors.inject(source.host_frame(page))
    for page in LATENT_PAGES:
        source_host.errors.inject(source.host_frame(page), latent=True)
    destination_host = HostMemory(1024, ArenaFrameStore(1024, prefault=True))
    destination = GuestMemory("vm-1", destination_host, AllocatedPageMap.allocate(destination_host, 1024))
    result = migrate_with_workload(source, destination)
    assert result.passes >= 3
    assert destination.poisoned_pages() == set(KNOWN_BAD_PAGES) | set(LATENT_PAGES)
    assert destination.page_digests() == source.page_digests()
    assert len(destination.page_digests()) == 1024 - 12


def test_destination_keeps_its_own_error_map_clean():
    source = make_source_with_errors()
    destination = make_vm(1024)
    migrate_with_workload(source, destination)
    assert destination.host.errors.known_frames() == frozenset()


def test_migration_downtime_within_limit_when_converging():
    source = make_source_with_errors()
    result = migrate_with_workload(source, make_vm(1024))
    assert result.stop_reason == "converged"
    assert result.stats.downtime_s <= 0.02


def test_non_converging_migration_ends_at_iteration_cap():
    source = make_vm(2048)
    populate(source, seed=1, nonzero_fraction=1.0)
    workload = GuestWorkload(source, seed=2, max_dirty_rate_pages_per_s=50_000, zero_write_fraction=0.0)
    destination = make_vm(2048)
    result = simulate_migration(
        source, destination, bandwidth_bytes_per_s=20e6, workload=workload,
        config=PrecopyConfig(max_iterations=5, downtime_limit_s=0.01),
    )
    assert result.stop_reason == "iteration-cap"
    assert result.stats.iterations == 5
    assert result.passes == 7
    assert result.stats.downtime_s > 0.01
    assert destination.page_digests() == source.page_digests()


def test_auto_converge_throttles_until_converged():
    source = make_vm(2048)
    populate(source, seed=1, nonzero_fraction=1.0)
    workload = GuestWorkload(source, seed=2, max_dirty_rate_pages_per_s=50_000, zero_write_fraction=0.0)
    destination = make_vm(2048)
    result = simulate_migration(
        source, destination, bandwidth_bytes_per_s=20e6, workload=workload,
        config=PrecopyConfig(max_iterations=200, downtime_limit_s=0.01, auto_converge=True),
    )
    assert result.stop_reason == "converged"
    assert result.stats.cpu_throttle_pct >= 20
    assert result.stats.iterations < 200
    assert destination.page_digests() == source.page_digests()


def test_source_switches_over_when_remainder_fits():
    engine = PrecopySource(1000)
    first = engine.start()
    assert isinstance(first, SendPass)
    assert list(first.guest_pages) == list(range(1000))
    # 1 MB/s for 0.3 s fits 73 DATA records of 4105 bytes (a 9-byte header and the page).
    step = engine.pass_done(PassReport(1_000_000, 1.0, normal_pages=244), dirty_pages=list(range(73)))
    assert isinstance(step, StopAndCopy)
    assert step.reason == "converged"
    assert step.expected_downtime_s == pytest.approx(73 * DATA_RECORD_SIZE_BYTES / 1e6)


def test_source_iterates_when_remainder_too_large():
    engine = PrecopySource(1000)
    engine.start()
    step = engine.pass_done(PassReport(1_000_000, 1.0), dirty_pages=list(range(74)))
    assert isinstance(step, SendPass)
    assert step.iteration == 1
    assert list(step.guest_pages) == list(range(74))
    assert engine.stats().remaining_bytes == 74 * PAGE_SIZE_BYTES


def test_source_switches_over_when_nothing_dirty():
    engine = PrecopySource(10)
    engine.start()
    step = engine.pass_done(PassReport(0, 1.0), dirty_pages=[])
    assert isinstance(step, StopAndCopy)
    assert step.reason == "converged"


def test_source_stops_at_zero_iteration_cap():
    engine = PrecopySource(1000, PrecopyConfig(max_iterations=0))
    engine.start()
    step = engine.pass_done(PassReport(1_000_000, 1.0), dirty_pages=list(range(500)))
    assert isinstance(step, StopAndCopy)
    assert step.reason == "iteration-cap"


def test_auto_converge_steps_like_qemu():
    engine = PrecopySource(100_000, PrecopyConfig(auto_converge=True, max_iterations=50))
    engine.start()
    throttles = []
    for _ in range(7):
        # Each pass dirties far more than half of what it sent.
        step = engine.pass_done(PassReport(4_096_000, 10.0), dirty_pages=list(range(10_000)))
        throttles.append(step.cpu_throttle_pct)
    assert throttles == [0, 20, 20, 30, 30, 40, 40]


def test_auto_converge_caps_throttle():
    config = PrecopyConfig(auto_converge=True, max_iterations=500, cpu_throttle_increment_pct=50)
    engine = PrecopySource(100_000, config)
    engine.start()
    for _ in range(10):
        step = engine.pass_done(PassReport(4_096_000, 10.0), dirty_pages=list(range(10_000)))
    assert step.cpu_throttle_pct == 99


def test_stop_copy_reports_downtime_and_totals():
    engine = PrecopySource(1000)
    engine.start(setup_time_s=0.02)
    engine.pass_done(PassReport(2_000_000, 2.0, normal_pages=400, zero_pages=600), dirty_pages=[1, 2])
    done = engine.stop_copy_done(PassReport(8_210, 0.01, normal_pages=1, error_pages=[2]), resume_s=0.005)
    stats = done.stats
    assert stats.status == "completed"
    assert stats.downtime_s == pytest.approx(0.015)
    assert stats.total_time_s == pytest.approx(2.035)
    assert stats.transferred_bytes == 2_008_210
    assert stats.precopy_bytes == 2_000_000
    assert stats.downtime_bytes == 8_210
    assert stats.normal_pages == 401
    assert stats.duplicate_pages == 600
    assert stats.poisoned_pages == 1
    assert stats.remaining_bytes == 0


def test_stats_use_query_migrate_names():
    engine = PrecopySource(1000)
    engine.start(setup_time_s=0.02)
    engine.pass_done(PassReport(2_000_000, 2.0, normal_pages=400, zero_pages=600), dirty_pages=[1, 2])
    reply = engine.stop_copy_done(PassReport(8_210, 0.01, normal_pages=2)).stats.to_query_migrate()
    assert {"status", "total-time", "setup-time", "downtime", "expected-downtime", "ram"} <= set(reply)
    assert set(reply["ram"]) == {
        "transferred", "remaining", "total", "duplicate", "normal", "normal-bytes", "dirty-pages-rate",
        "mbps", "pages-per-second", "dirty-sync-count", "precopy-bytes", "downtime-bytes", "poisoned-pages",
    }
    assert reply["status"] == "completed"
    assert reply["setup-time"] == 20
    assert reply["downtime"] == 10
    assert reply["ram"]["total"] == 1000 * PAGE_SIZE_BYTES
    assert reply["ram"]["normal-bytes"] == 402 * PAGE_SIZE_BYTES
    # On completion mbps averages over the whole transfer, setup excluded, as in QEMU.
    assert reply["ram"]["mbps"] == pytest.approx(2_008_210 * 8 / 2.01 / 1e6)
    assert reply["ram"]["pages-per-second"] == round(1002 / 2.01)
    assert reply["ram"]["dirty-sync-count"] == 1


def test_source_rejects_calls_out_of_order():
    engine = PrecopySource(10)
    with pytest.raises(WrongMigrationState) as caught:
        engine.pass_done(PassReport(0, 0.0), dirty_pages=[])
    assert caught.value.status == "setup"
    engine.start()
    with pytest.raises(WrongMigrationState):
        engine.stop_copy_done(PassReport(0, 0.0))
    engine.fail("destination host-2 stopped answering")
    assert engine.stats().to_query_migrate()["error-desc"] == "destination host-2 stopped answering"
    with pytest.raises(WrongMigrationState):
        engine.cancel()


def test_pass_report_rejects_negative_values():
    with pytest.raises(ValueError, match="bytes_sent -1"):
        PassReport(-1, 1.0)
    with pytest.raises(ValueError, match="elapsed_s nan"):
        PassReport(1, float("nan"))


def test_config_rejects_bad_downtime_limit():
    with pytest.raises(ValueError, match="downtime_limit_s 0"):
        PrecopyConfig(downtime_limit_s=0)


def test_model_without_dirtying_sends_memory_once():
    prediction = predict_precopy(1 << 30, 0, 100e6)
    assert prediction.total_time_s == pytest.approx((1 << 30) / 100e6)
    assert prediction.downtime_s == 0
    assert prediction.iterations == 0
    assert prediction.reason == "converged"


def test_model_geometric_rounds():
    # D/R = 1/2 from 800 MB: 800, 400, 200, 100, 50, then 25 MB fits 100 MB/s * 0.3 s.
    prediction = predict_precopy(800e6, 50e6, 100e6)
    assert prediction.reason == "converged"
    assert prediction.iterations == 4
    assert prediction.downtime_s == pytest.approx(0.25)
    assert prediction.total_time_s == pytest.approx(15.75)
    assert prediction.transferred_bytes == pytest.approx(1575e6)


def test_model_hits_iteration_cap_when_dirtying_outruns_bandwidth():
    prediction = predict_precopy(1e9, 200e6, 100e6, max_iterations=4)
    assert prediction.reason == "iteration-cap"
    assert prediction.iterations == 4
    assert prediction.downtime_s == pytest.approx(10.0)
