"""Read a stored event history: from the cluster's stream or from a JSON-lines file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import nats
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

import proto
from proto import subjects

from .._bus import operator_options_for
from .._config import ConfigError
from .._events import format_event
from .._locate import broker_url
from .._supervise import retry

READ_TIMEOUT_S = 20.0
# How long reading retries stream_info, e.g. while the brokers elect a new stream leader.
LEADER_WAIT_S = 20.0


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read events in the format of `dcfleet events --json`, one object per line."""
    records = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{number}: not a JSON object: {exc.msg}") from None
    return records


async def read_stream(state_dir: str | None, nats_url: str | None) -> list[dict[str, Any]]:
    """Read every stored event of a cluster, running or stopped."""
    async with broker_url(state_dir, nats_url) as url:
        nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=2,
                                **operator_options_for(state_dir, url))
        try:
            return await _read_all(nc)
        finally:
            await nc.close()


async def _read_all(nc: Any) -> list[dict[str, Any]]:
    js = nc.jetstream()
    try:
        # Right after a broker node dies, the stream has no leader until the others elect one.
        info = await retry(lambda: js.stream_info(subjects.EVENTS_STREAM),
                           (nats.errors.TimeoutError, asyncio.TimeoutError), LEADER_WAIT_S)
    except NotFoundError:
        raise ConfigError(f"the broker has no {subjects.EVENTS_STREAM} stream; is this a dcfleet cluster?") from None
    last_seq = info.state.last_seq
    records: list[dict[str, Any]] = []
    if info.state.messages == 0:
        return records
    subscription = await js.subscribe(subjects.EVENTS_ALL, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    try:
        while True:
            try:
                msg = await subscription.next_msg(timeout=READ_TIMEOUT_S)
            except (asyncio.TimeoutError, nats.errors.TimeoutError):
                raise ConfigError(f"timed out reading the event stream after sequence "
                                  f"{records[-1]['seq'] if records else 0} of {last_seq}") from None
            seq = msg.metadata.sequence.stream
            records.append(_record(seq, msg.data))
            if seq >= last_seq:
                return records
    finally:
        await subscription.unsubscribe()


def _record(seq: int, payload: bytes) -> dict[str, Any]:
    try:
        envelope = proto.decode(payload)
    except proto.MessageRejected as exc:
        # Kept in the history so a sequence gap is not reported in its place.
        return {"seq": seq, "id": f"undecodable-{seq}", "type": "undecodable", "time": 0.0,
                "source": "", "data": {"reason": str(exc)}}
    return json.loads(format_event(seq, envelope, as_json=True))
