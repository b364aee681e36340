import msgpack
import pytest

import proto


def _wire(**overrides):
    fields = {"v": 1, "type": "host.booted", "id": "abc", "time": 1.5, "source": "host.h1",
              "data": {"host": "h1", "components": ["loader.efi"], "boot_count": 1}}
    fields.update(overrides)
    return msgpack.packb(fields, use_bin_type=True)


def test_envelope_round_trip():
    message = proto.HostBooted(host="h1", components=["loader.efi"], boot_count=2)
    envelope = proto.Envelope(type=message.TYPE, source="host.h1", data=message.to_data())
    decoded = proto.decode(proto.encode(envelope))
    assert decoded == envelope
    assert proto.parse(decoded) == message


def test_envelope_truncated_rejected():
    payload = _wire()
    for cut in (1, 5, len(payload) // 2, len(payload) - 1):
        with pytest.raises(proto.MessageRejected) as info:
            proto.decode(payload[:cut])
        assert info.value.reason == "malformed"


def test_envelope_garbage_rejected():
    with pytest.raises(proto.MessageRejected):
        proto.decode(b"\xc1\xff\x00garbage")


def test_envelope_trailing_bytes_rejected():
    with pytest.raises(proto.MessageRejected) as info:
        proto.decode(_wire() + b"\x00")
    assert info.value.reason == "malformed"


def test_envelope_oversized_rejected():
    with pytest.raises(proto.MessageRejected) as info:
        proto.decode(b"\x00" * (proto.MAX_ENVELOPE_BYTES + 1))
    assert info.value.reason == "oversized"


def test_encode_oversized_rejected():
    envelope = proto.Envelope(type="x", source="s", data={"blob": b"\x00" * proto.MAX_ENVELOPE_BYTES})
    with pytest.raises(proto.MessageRejected):
        proto.encode(envelope)


def test_envelope_not_a_map_rejected():
    with pytest.raises(proto.MessageRejected) as info:
        proto.decode(msgpack.packb([1, 2, 3]))
    assert "not a map" in info.value.detail


@pytest.mark.parametrize(
    "field, value",
    [("v", "1"), ("type", 7), ("id", None), ("time", "now"), ("source", b"x"), ("data", [1]), ("v", True)],
)
def test_envelope_wrong_field_type_rejected(field, value):
    with pytest.raises(proto.MessageRejected) as info:
        proto.decode(_wire(**{field: value}))
    assert field in info.value.detail


def test_envelope_missing_field_rejected():
    fields = msgpack.unpackb(_wire())
    del fields["source"]
    with pytest.raises(proto.MessageRejected) as info:
        proto.decode(msgpack.packb(fields))
    assert "source" in info.value.detail


def test_envelope_unknown_version_rejected():
    with pytest.raises(proto.MessageRejected) as info:
        proto.decode(_wire(v=2))
    assert info.value.reason == "unknown-version"


def test_parse_unknown_type_rejected():
    envelope = proto.decode(_wire(type="host.exploded"))
    with pytest.raises(proto.MessageRejected) as info:
        proto.parse(envelope)
    assert info.value.reason == "unknown-type"


def test_parse_wrong_data_type_rejected():
    envelope = proto.decode(_wire(data={"host": "h1", "components": "loader", "boot_count": 1}))
    with pytest.raises(proto.MessageRejected) as info:
        proto.parse(envelope)
    assert "components" in info.value.detail


def test_parse_bool_is_not_an_int():
    envelope = proto.decode(_wire(data={"host": "h1", "components": [], "boot_count": True}))
    with pytest.raises(proto.MessageRejected):
        proto.parse(envelope)


def test_parse_ignores_unknown_fields():
    envelope = proto.decode(_wire(data={"host": "h1", "components": [], "boot_count": 1, "added_later": 5}))
    assert proto.parse(envelope) == proto.HostBooted(host="h1", components=[], boot_count=1)


def test_parse_unexpected_type_rejected():
    envelope = proto.decode(_wire())
    with pytest.raises(proto.MessageRejected) as info:
        proto.parse(envelope, proto.Reply)
    assert info.value.reason == "unexpected-type"


def test_subjects_readme_lists_every_message_type():
    from pathlib import Path

    readme = (Path(proto.__file__).parent / "README.md").read_text()
    missing = [name for name in proto.MESSAGE_TYPES if f"`{name}`" not in readme]
    assert missing == []


def _event_payload(source, message):
    return proto.encode(proto.Envelope(type=message.TYPE, source=source, data=message.to_data()))


def test_parse_event_accepts_matching_source():
    booted = proto.HostBooted(host="h1", components=[], boot_count=1)
    subject = proto.subjects.event_from("host.h1", booted.TYPE)
    assert proto.parse_event(subject, _event_payload("host.h1", booted)) == booted


def test_parse_event_rejects_source_of_other_subject():
    booted = proto.HostBooted(host="h2", components=[], boot_count=1)
    # h1's credential may publish on h1's subject only; the envelope claims to be h2.
    subject = proto.subjects.event_from("host.h1", booted.TYPE)
    with pytest.raises(proto.MessageRejected) as info:
        proto.parse_event(subject, _event_payload("host.h2", booted))
    assert info.value.reason == "forged-source"


def test_parse_event_rejects_host_naming_other_host():
    failed = proto.HostBootFailed(host="h2", file="x", check="signature", reason="forged")
    subject = proto.subjects.event_from("host.h1", failed.TYPE)
    with pytest.raises(proto.MessageRejected) as info:
        proto.parse_event(subject, _event_payload("host.h1", failed))
    assert "about host 'h2'" in info.value.detail


def test_parse_event_rejects_type_of_other_subject():
    booted = proto.HostBooted(host="h1", components=[], boot_count=1)
    subject = proto.subjects.event_from("host.h1", "host.heartbeat")
    with pytest.raises(proto.MessageRejected):
        proto.parse_event(subject, _event_payload("host.h1", booted))
