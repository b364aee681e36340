"""The host agent's record of provisions it started and has not ended."""

import proto
from agents.host._provision_journal import ProvisionJournal


def started(provision):
    message = proto.DpuProvisionStarted(provision=provision, host="h1", dpu="h1-dpu", image="bf3-mgmt-os-2.2.0",
                                        version="2.2.0", monotonic_count=2, image_uri="http://10.0.0.2:1/c.cap")
    return proto.Envelope(type=message.TYPE, source="host.h1", data=message.to_data())


def test_journal_keeps_envelope_and_task(tmp_path):
    journal = ProvisionJournal(str(tmp_path), "h1")
    envelope = started("p1")
    journal.begin("p1", envelope)
    journal.set_task("p1", "/redfish/v1/TaskService/TaskMonitors/1")

    entries = ProvisionJournal(str(tmp_path), "h1").open_provisions()
    assert [e.provision_id for e in entries] == ["p1"]
    assert entries[0].started == envelope
    assert entries[0].task_uri == "/redfish/v1/TaskService/TaskMonitors/1"
    assert isinstance(proto.parse(entries[0].started), proto.DpuProvisionStarted)


def test_journal_forgets_ended_provision(tmp_path):
    journal = ProvisionJournal(str(tmp_path), "h1")
    journal.begin("p1", started("p1"))
    journal.begin("p2", started("p2"))
    journal.end("p1")
    assert [e.provision_id for e in journal.open_provisions()] == ["p2"]
    assert [e.task_uri for e in journal.open_provisions()] == [""]


def test_journal_skips_unreadable_entry(tmp_path):
    journal = ProvisionJournal(str(tmp_path), "h1")
    journal.begin("p1", started("p1"))
    (journal.root / "p2.json").write_text("{not json")
    assert [e.provision_id for e in journal.open_provisions()] == ["p1"]


def test_empty_journal_has_no_provisions(tmp_path):
    assert ProvisionJournal(str(tmp_path), "h1").open_provisions() == []
