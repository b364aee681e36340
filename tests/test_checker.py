"""The history checker on hand-made histories: one per kind of violation, and a clean one."""

import pytest

from agents.checker import HistoryError, check_events, memory_problem


class History:
    """Builds an event list with consecutive sequences and advancing sender times."""

    def __init__(self):
        self.events = []

    def add(self, type_, sender="test", **data):
        seq = len(self.events) + 1
        self.events.append({"seq": seq, "id": f"e{seq}", "type": type_, "time": 1000.0 + seq,
                            "source": sender, "data": data})
        return self.events[-1]

    def boot(self, *hosts):
        for host in hosts:
            self.add("host.booted", sender=f"host.{host}", host=host, components=[], boot_count=1)

    def place(self, vm, host):
        return self.add("vm.placed", sender=f"host.{host}", vm=vm, host=host, memory_bytes=4096, digest="d")

    def heartbeat(self, host, *vms, power_state="On"):
        return self.add("host.heartbeat", sender=f"host.{host}", host=host, power_state=power_state, booted=True,
                        utilization=0.1, cpu_mips_used=1.0, cpu_mips_total=10.0, memory_used_bytes=0,
                        memory_total_bytes=1, power_watts=1.0, vms={vm: 1.0 for vm in vms}, sim_time=0.0)

    def migrate(self, migration, vm, source, destination, outcome="completed", **extra):
        base = dict(migration=migration, vm=vm, source=source, destination=destination)
        self.add("migration.started", sender="migration", **base)
        if outcome == "completed":
            fields = dict(source_digest="aa", destination_digest="aa", stats={})
            fields.update(extra)
            return self.add("migration.completed", sender="migration", **base, **fields)
        if outcome == "failed":
            return self.add("migration.failed", sender="migration", reason="test", **base)
        return None


def clean_history():
    h = History()
    h.add("agent.started", sender="migration", agent="migration", kind="migration", pid=1)
    h.add("agent.started", sender="power", agent="power", kind="power", pid=2)
    h.boot("h1", "h2")
    h.place("vm1", "h1")
    h.place("vm2", "h2")
    h.heartbeat("h1", "vm1")
    h.migrate("m1", "vm1", "h1", "h2")
    h.heartbeat("h2", "vm1", "vm2")
    h.heartbeat("h1")
    h.migrate("m2", "vm2", "h2", "h1", outcome="failed")
    h.heartbeat("h2", "vm1", "vm2")
    h.add("power.recommendation", sender="power", action="power_off", host="h1", reason="", scores={}, moves=[],
          carried_out=True)
    h.add("host.power_off", sender="host.h1", host="h1", via="redfish")
    h.add("power.completed", sender="power", action="power_off", host="h1")
    h.add("host.power_on", sender="host.h1", host="h1", via="redfish")
    h.boot("h1")
    h.migrate("m3", "vm2", "h2", "h1")
    return h


def invariants(report):
    return [v.invariant for v in report.violations]


def test_clean_history_passes():
    report = check_events(clean_history().events)
    assert report.violations == []
    assert report.unfinished == []
    assert report.events == len(clean_history().events)


def test_duplicate_placement_names_both_events():
    h = clean_history()
    h.place("vm1", "h1")
    report = check_events(h.events)
    assert invariants(report) == ["placement"]
    cited = [(e.id, e.seq) for e in report.violations[0].events]
    assert cited == [("e9", 9), (h.events[-1]["id"], h.events[-1]["seq"])]


def test_vm_reported_by_two_hosts():
    h = clean_history()
    h.heartbeat("h1", "vm1", "vm2")
    report = check_events(h.events)
    assert invariants(report) == ["placement"]
    assert "runs on h1 and on h2" in report.violations[0].message


def test_vm_vanishing_from_its_host():
    h = clean_history()
    h.heartbeat("h1")
    report = check_events(h.events)
    assert invariants(report) == ["placement"]
    assert "vm2" in report.violations[0].message


def test_repeated_heartbeat_violation_reported_once():
    h = clean_history()
    h.heartbeat("h1", "vm1", "vm2")
    h.heartbeat("h1", "vm1", "vm2")
    assert invariants(check_events(h.events)) == ["placement"]


def test_heartbeat_built_before_move_is_not_a_violation():
    h = clean_history()
    stale = h.heartbeat("h2", "vm1", "vm2")
    stale["time"] = h.events[-2]["time"] - 0.5
    assert check_events(h.events).violations == []


def test_lost_vm_may_be_placed_again():
    h = clean_history()
    h.add("vm.lost", sender="host.h1", vm="vm2", host="h1", reason="host crashed")
    h.place("vm2", "h1")
    assert check_events(h.events).violations == []


def test_lost_on_wrong_host():
    h = clean_history()
    h.add("vm.lost", sender="host.h2", vm="vm2", host="h2", reason="test")
    assert invariants(check_events(h.events)) == ["placement"]


def test_migration_from_wrong_source():
    h = clean_history()
    h.migrate("m9", "vm1", "h1", "h2")
    assert sorted(invariants(check_events(h.events))) == ["migration", "placement"]


def test_failed_migration_leaves_vm_on_destination():
    h = clean_history()
    h.add("migration.started", sender="migration", migration="m9", vm="vm1", source="h2", destination="h1")
    h.add("migration.failed", sender="migration", migration="m9", vm="vm1", destination="h1", reason="t", source="h2")
    h.heartbeat("h1", "vm1", "vm2")
    report = check_events(h.events)
    assert invariants(report) == ["placement"]
    assert "runs on h1 and on h2" in report.violations[0].message


def test_memory_digest_mismatch():
    h = clean_history()
    h.migrate("m9", "vm1", "h2", "h1", source_digest="aa", destination_digest="bb")
    report = check_events(h.events)
    assert invariants(report) == ["memory"]
    assert report.violations[0].events[0].type == "migration.completed"


def test_memory_poisoned_pages_may_differ():
    assert memory_problem({"differing_pages": [3, 7], "poisoned_pages": [3, 7]}) == ""
    assert "1 pages" in memory_problem({"differing_pages": [3, 8], "poisoned_pages": [3]})


def test_placement_on_host_without_secure_boot():
    h = clean_history()
    h.add("host.boot_failed", sender="host.h1", host="h1", file="kernel", check="signature", reason="bad")
    h.place("vm3", "h1")
    report = check_events(h.events)
    assert invariants(report) == ["secure-boot"]
    assert [e.type for e in report.violations[0].events] == ["host.boot_failed", "vm.placed"]


def test_placement_on_host_never_booted():
    h = clean_history()
    h.place("vm3", "h9")
    assert invariants(check_events(h.events)) == ["secure-boot"]


def test_migration_to_host_after_power_on_before_boot():
    h = clean_history()
    h.add("host.power_off", sender="host.h2", host="h2", via="redfish")
    h.add("host.power_on", sender="host.h2", host="h2", via="redfish")
    h.migrate("m9", "vm2", "h1", "h2")
    report = check_events(h.events)
    assert "secure-boot" in invariants(report)


def test_power_off_with_running_vm():
    h = clean_history()
    off = h.add("host.power_off", sender="host.h2", host="h2", via="redfish")
    report = check_events(h.events)
    assert invariants(report) == ["power-off"]
    assert report.violations[0].events[-1].id == off["id"]


def test_power_off_that_loses_vms():
    h = clean_history()
    h.add("vm.lost", sender="host.h2", vm="vm1", host="h2", reason="host powered off")
    h.add("host.power_off", sender="host.h2", host="h2", via="redfish")
    assert invariants(check_events(h.events)) == ["power-off"]


def test_migration_lost_after_coordinator_restart():
    h = clean_history()
    h.add("migration.started", sender="migration", migration="m9", vm="vm1", destination="h1", source="h2")
    h.add("agent.started", sender="migration", agent="migration", kind="migration", pid=9)
    report = check_events(h.events)
    assert invariants(report) == ["command"]
    assert report.unfinished == []


def test_migration_in_flight_at_stop_is_unfinished_not_lost():
    h = clean_history()
    h.add("migration.started", sender="migration", migration="m9", vm="vm1", destination="h1", source="h2")
    h.add("agent.stopped", sender="migration", agent="migration", kind="migration", reason="signal")
    report = check_events(h.events)
    assert report.violations == []
    assert [(u.command, u.key) for u in report.unfinished] == [("migration", "m9")]


def test_migration_without_outcome_before_next_one():
    h = clean_history()
    h.migrate("m4", "vm1", "h2", "h1", outcome=None)
    h.migrate("m5", "vm1", "h2", "h1", outcome="failed")
    report = check_events(h.events)
    assert invariants(report) == ["migration"]
    assert "m4 of VM vm1 never ended before migration m5" in report.violations[0].message
    assert report.unfinished == []


def test_migration_outcome_overdue_at_destination():
    h = clean_history()
    start = h.add("migration.started", sender="migration", migration="m4", vm="vm1", source="h2", destination="h1")
    first = h.heartbeat("h1", "vm1", "vm2")
    last = h.heartbeat("h1", "vm1", "vm2")
    last["time"] = first["time"] + 121
    report = check_events(h.events)
    assert invariants(report) == ["migration"]
    assert "m4 of VM vm1 has no outcome, though h1 has run the VM for 121 s" in report.violations[0].message
    assert [e.id for e in report.violations[0].events] == [start["id"], first["id"], last["id"]]
    assert report.unfinished == []


def test_migration_outcome_within_grace_is_not_overdue():
    h = clean_history()
    h.add("migration.started", sender="migration", migration="m4", vm="vm1", source="h2", destination="h1")
    first = h.heartbeat("h1", "vm1", "vm2")
    late = h.heartbeat("h1", "vm1", "vm2")
    late["time"] = first["time"] + 60
    h.add("migration.completed", sender="migration", migration="m4", vm="vm1", source="h2", destination="h1",
          source_digest="aa", destination_digest="aa", stats={})
    assert check_events(h.events).violations == []


def test_source_resume_after_failed_migration():
    # The coordinator fails the migration while the source restarts; the restarted source
    # later resumes the paused VM on its own and says so with vm.resumed, not an outcome.
    h = clean_history()
    failed = h.migrate("m9", "vm2", "h1", "h2", outcome="failed")
    h.add("agent.started", sender="host.h1", agent="host.h1", kind="host", pid=9)
    h.add("vm.resumed", sender="host.h1", vm="vm2", host="h1", migration="m9",
          reason="source h1 got no commit outcome within 15 s; VM resumed on source")
    h.heartbeat("h1", "vm2")
    report = check_events(h.events)
    assert report.violations == []
    assert report.unfinished == []

    # A second terminal event from the source is what the command invariant catches.
    h.add("migration.failed", sender="host.h1", **{k: failed["data"][k] for k in
                                                   ("migration", "vm", "source", "destination", "reason")})
    assert invariants(check_events(h.events)) == ["command"]


def test_power_recommendation_without_outcome_after_restart():
    h = clean_history()
    h.add("power.recommendation", sender="power", action="power_on", host="h3", reason="", scores={}, moves=[],
          carried_out=True)
    h.add("agent.started", sender="power", agent="power", kind="power", pid=9)
    assert invariants(check_events(h.events)) == ["command"]


def test_recommendation_not_carried_out_is_not_a_command():
    h = clean_history()
    h.add("power.recommendation", sender="power", action="power_on", host="h3", reason="", scores={}, moves=[],
          carried_out=False)
    h.add("agent.started", sender="power", agent="power", kind="power", pid=9)
    assert check_events(h.events).violations == []


def test_terminal_without_start():
    h = clean_history()
    h.add("power.failed", sender="power", action="power_off", host="h2", reason="x")
    assert invariants(check_events(h.events)) == ["command"]


def provision_started(h, provision, host="h1"):
    return h.add("dpu.provision_started", sender=f"host.{host}", provision=provision, host=host, dpu=f"{host}-dpu",
                 image="bf3-mgmt-os-2.2.0", version="2.2.0", monotonic_count=2, image_uri="http://x/c.cap")


def test_dpu_provision_without_outcome_after_restart():
    h = clean_history()
    provision_started(h, "p1")
    h.add("agent.started", sender="host.h1", agent="host.h1", kind="host", pid=9)
    report = check_events(h.events)
    assert invariants(report) == ["command"]
    assert "owner (host.h1)" in report.violations[0].message


def test_dpu_provision_owned_by_its_host_only():
    h = clean_history()
    provision_started(h, "p1")
    h.add("agent.started", sender="host.h2", agent="host.h2", kind="host", pid=9)
    h.add("agent.started", sender="dpu", agent="dpu", kind="dpu", pid=10)
    report = check_events(h.events)
    assert report.violations == []
    assert [u.key for u in report.unfinished] == ["p1"]


def test_dpu_provisions_keyed_by_provision_id():
    h = clean_history()
    provision_started(h, "p1")
    h.add("dpu.provision_failed", sender="host.h1", provision="p1", host="h1", dpu="h1-dpu", image="i", reason="x")
    provision_started(h, "p2")
    h.add("dpu.provisioned", sender="host.h1", provision="p2", host="h1", dpu="h1-dpu", image="i", version="2.2.0",
          task_uri="/t")
    report = check_events(h.events)
    assert report.violations == []
    assert report.unfinished == []


def test_sequence_gap():
    h = clean_history()
    del h.events[6]
    report = check_events(h.events)
    assert invariants(report) == ["sequence"]
    assert [e.seq for e in report.violations[0].events] == [6, 8]


def test_duplicate_event_id():
    h = clean_history()
    h.events[-1]["id"] = h.events[0]["id"]
    report = check_events(h.events)
    assert invariants(report) == ["sequence"]
    assert [e.seq for e in report.violations[0].events] == [1, len(h.events)]


def test_malformed_record_rejected():
    with pytest.raises(HistoryError, match="record 1: field 'seq'"):
        check_events([{"seq": 1, "id": "a", "type": "x", "data": {}}, {"id": "b", "type": "x", "data": {}}])
