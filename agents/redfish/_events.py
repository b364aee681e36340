"""Redfish events delivered to server-sent event (SSE) streams."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
from typing import Any

from aiohttp import web

from agents.redfish._errors import message

EVENT_ODATA_TYPE = "#Event.v1_13_0.Event"
SUBSCRIBER_QUEUE_LIMIT = 256
KEEPALIVE_INTERVAL_S = 15.0


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class EventBus:
    """Fans each event out to every open SSE stream. A stream that falls
    SUBSCRIBER_QUEUE_LIMIT events behind loses the oldest ones."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()

    def publish(self, key: str, *args: object, origin: str, detail: str | None = None) -> dict:
        event_id = str(next(self._ids))
        record = message(key, *args, detail=detail)
        record.pop("@odata.type")
        record.pop("Resolution")
        record.update(EventId=event_id, EventTimestamp=now_iso(),
                      OriginOfCondition={"@odata.id": origin})
        event = {
            "@odata.type": EVENT_ODATA_TYPE,
            "Id": event_id,
            "Name": "Redfish event",
            "Events": [record],
        }
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)
        return event

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(SUBSCRIBER_QUEUE_LIMIT)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self._subscribers.discard(queue)

    def close(self) -> None:
        """End every open stream."""
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)


async def stream_events(request: web.Request, bus: EventBus) -> web.StreamResponse:
    """Serve events as text/event-stream until the client leaves or the service stops."""
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "OData-Version": "4.0",
    })
    queue = bus.subscribe()
    try:
        await response.prepare(request)
        await response.write(b": stream open\n\n")
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), KEEPALIVE_INTERVAL_S)
            except asyncio.TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            if event is None:
                break
            frame = f"id: {event['Id']}\ndata: {json.dumps(event)}\n\n"
            await response.write(frame.encode())
    except ConnectionResetError:
        pass  # The client closed the stream; nothing is left to send.
    finally:
        bus.unsubscribe(queue)
    return response
