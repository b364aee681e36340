"""`dcfleet events`: print the cluster's event stream."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import fnmatch
import json
import sys
from typing import Any

import nats
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

import proto
from proto import subjects

from ._bus import operator_options_for
from ._locate import broker_url, cluster_running

STREAM_READY_TIMEOUT_S = 30.0


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def format_event(seq: int, envelope: proto.Envelope, as_json: bool) -> str:
    if as_json:
        return json.dumps({
            "seq": seq,
            "id": envelope.id,
            "type": envelope.type,
            "time": envelope.time,
            "source": envelope.source,
            "data": _jsonable(envelope.data),
        }, separators=(",", ":"))
    stamp = dt.datetime.fromtimestamp(envelope.time, dt.timezone.utc).strftime("%H:%M:%S.%f")[:-3]
    fields = " ".join(f"{k}={json.dumps(_jsonable(v), separators=(',', ':'))}" for k, v in envelope.data.items())
    return f"{seq:>7} {stamp} {envelope.type:<24} {envelope.source:<14} {fields}"


async def print_events(
    state_dir: str | None, nats_url: str | None, follow: bool, as_json: bool, pattern: str | None
) -> int:
    if follow and not cluster_running(state_dir, nats_url):
        print("dcfleet: the cluster is not running; printing its stored events, no new ones will come",
              file=sys.stderr)
        follow = False
    async with broker_url(state_dir, nats_url) as url:
        closed = asyncio.Event()

        async def on_error(exc: Exception) -> None:
            # Connection errors end the command below with one line; nats-py's own
            # report would be a traceback per reconnect attempt.
            pass

        async def on_closed() -> None:
            closed.set()

        nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=2, error_cb=on_error,
                                closed_cb=on_closed, **operator_options_for(state_dir, url))
        try:
            return await _print_from(nc, follow, as_json, pattern, closed)
        finally:
            await _disconnect(nc)


async def _disconnect(nc: Any) -> None:
    try:
        if nc.is_connected:
            await nc.drain()
        else:
            await nc.close()
    except (nats.errors.Error, OSError):
        pass


async def _print_from(nc: Any, follow: bool, as_json: bool, pattern: str | None, closed: asyncio.Event) -> int:
    js = nc.jetstream()
    # A broker cluster that was just started elects the stream's leader first: retry for a while.
    deadline = asyncio.get_running_loop().time() + STREAM_READY_TIMEOUT_S
    while True:
        try:
            info = await js.stream_info(subjects.EVENTS_STREAM)
            break
        except NotFoundError:
            print(f"error: the broker has no {subjects.EVENTS_STREAM} stream; is this a dcfleet cluster?",
                  file=sys.stderr)
            return 1
        except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError) as exc:
            if asyncio.get_running_loop().time() >= deadline:
                print(f"error: the event stream did not answer within {STREAM_READY_TIMEOUT_S:g} s ({exc!r}); "
                      "is the broker cluster up?", file=sys.stderr)
                return 1
            await asyncio.sleep(0.5)
    last_seq = info.state.last_seq
    if last_seq == 0 and not follow:
        return 0
    subscription = await js.subscribe(subjects.EVENTS_ALL, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    waited_s = 0.0
    try:
        while True:
            try:
                msg = await subscription.next_msg(timeout=1.0)
            except (asyncio.TimeoutError, nats.errors.TimeoutError, nats.errors.ConnectionClosedError):
                if closed.is_set() or nc.is_closed:
                    print("dcfleet: lost the connection to the cluster's broker (the cluster stopped?); "
                          "no more events", file=sys.stderr)
                    return 0 if follow else 1
                waited_s += 1.0
                if not follow and waited_s >= 10:
                    print(f"error: timed out reading the event stream at sequence {last_seq}", file=sys.stderr)
                    return 1
                continue
            waited_s = 0.0
            seq = msg.metadata.sequence.stream
            _print_one(seq, msg.data, as_json, pattern)
            if not follow and seq >= last_seq:
                return 0
    finally:
        if nc.is_connected:
            await subscription.unsubscribe()


def _print_one(seq: int, data: bytes, as_json: bool, pattern: str | None) -> None:
    try:
        envelope = proto.decode(data)
    except proto.MessageRejected as exc:
        print(f"warning: event {seq} is not a valid envelope: {exc}", file=sys.stderr)
        return
    if pattern and not fnmatch.fnmatchcase(envelope.type, pattern):
        return
    print(format_event(seq, envelope, as_json), flush=True)
