"""Fault durations: finite and bounded on the command line, through the Python API, and in every event."""

import math

import pytest

import proto
from agents._durations import MAX_FAULT_S
from agents._up import UpOptions, build_config
from agents.chaos import Cluster
from agents.cli import build_parser


@pytest.mark.parametrize("words", [
    ["cut", "host-h1"],
    ["pause", "power"],
    ["bmc", "h1", "error"],
])
@pytest.mark.parametrize("value", ["inf", "1e9", "nan", "0", "-1", "x"])
def test_inject_rejects_bad_duration(words, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["inject", *words, "--for", value])
    assert exit_info.value.code == 2
    assert "--for" in capsys.readouterr().err


def test_inject_accepts_longest_duration():
    args = build_parser().parse_args(["inject", "cut", "host-h1", "--for", f"{MAX_FAULT_S:g}"])
    assert args.duration_s == MAX_FAULT_S


def test_inject_rejects_delay_over_bmc_limit(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["inject", "bmc", "h1", "slow", "--delay", "301"])
    assert "at most 300 s" in capsys.readouterr().err


@pytest.mark.parametrize("value", [math.inf, math.nan, 1e9, 0.0, -2.0])
async def test_cluster_api_rejects_bad_duration(tmp_path, value):
    # The duration is checked before the cluster is touched, so no client is needed.
    cluster = Cluster(build_config(UpOptions(state_dir=tmp_path, hosts=1, vms=0)), client=None)
    with pytest.raises(ValueError, match="duration_s must be"):
        await cluster.cut("host-h1", value)
    with pytest.raises(ValueError, match="duration_s must be"):
        await cluster.pause("host-h1", value)
    with pytest.raises(ValueError, match="duration_s must be"):
        await cluster.bmc_fault("h1", "hang", value)


async def test_cluster_api_rejects_infinite_delay(tmp_path):
    cluster = Cluster(build_config(UpOptions(state_dir=tmp_path, hosts=1, vms=0)), client=None)
    with pytest.raises(ValueError, match="delay_s must be a finite number"):
        await cluster.bmc_fault("h1", "slow", 5.0, math.inf)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_event_with_non_finite_number_rejected(value):
    message = proto.FaultInjected(fault="cut", target="host-h1", fault_id="f1", params={"duration_s": value})
    envelope = proto.Envelope(type=message.TYPE, source="chaos", data=message.to_data())
    with pytest.raises(proto.MessageRejected, match=r"fault.injected: data.params.duration_s is not a finite"):
        proto.encode(envelope)


def test_event_with_nested_non_finite_number_rejected():
    envelope = proto.Envelope(type="x", source="chaos", data={"moves": [[1.0, 2.0], [3.0, math.nan]]})
    with pytest.raises(proto.MessageRejected, match=r"data.moves.1.1"):
        proto.encode(envelope)


def test_event_with_finite_numbers_encoded():
    envelope = proto.Envelope(type="x", source="chaos", data={"duration_s": 5.0, "b": b"\x00", "n": [1, 2.5]})
    assert proto.decode(proto.encode(envelope)).data == envelope.data
