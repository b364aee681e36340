"""Base of every agent process: bus connection, events, commands, lifecycle."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import structlog
from nats.aio.msg import Msg
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import BadRequestError

import proto
from proto import subjects

from . import _bus, _metrics
from ._config import ClusterConfig
from ._supervise import retry

Handler = Callable[[Any, Msg], Awaitable[dict[str, Any] | None]]

# A silent network cut is noticed after ping_interval x max_outstanding_pings
# seconds, instead of nats-py's default of about four minutes.
PING_INTERVAL_S = 1
MAX_OUTSTANDING_PINGS = 3
# How long an event publish retries through a broker outage before it raises.
PUBLISH_RETRY_S = 60.0
# How long a stopping agent tries to store its agent.stopped event.
STOP_EVENT_TIMEOUT_S = 5.0
# How long a stop may take before the process exits anyway. `dcfleet up` kills an
# agent after 10 s; an agent whose supervisor died must not outlive it either.
STOP_DEADLINE_S = 8.0
PUBLISH_RETRY_ERRORS = (nats.errors.TimeoutError, nats.errors.NoRespondersError,
                        nats.errors.OutboundBufferLimitError, nats.js.errors.NoStreamResponseError,
                        asyncio.TimeoutError)


class CommandFailed(RuntimeError):
    """A command reached its agent and the agent returned an error."""

    def __init__(self, subject: str, error: str) -> None:
        self.subject = subject
        self.error = error
        super().__init__(f"{subject}: {error}")


class CommandTimeout(RuntimeError):
    """No agent replied to a command in time, or none serves its subject; the caller may retry."""

    def __init__(self, subject: str, timeout_s: float, no_responders: bool = False) -> None:
        self.subject = subject
        self.timeout_s = timeout_s
        self.no_responders = no_responders
        if no_responders:
            super().__init__(f"{subject}: no agent serves this subject; is it running?")
        else:
            super().__init__(f"{subject}: no reply within {timeout_s} s")


async def send_command(nc: nats.NATS, subject: str, payload: bytes, timeout_s: float) -> dict[str, Any]:
    """Send an encoded command; return the result of a successful reply.

    Raises CommandTimeout when no agent replies in time and CommandFailed for an
    error reply or a reply that does not decode.
    """
    try:
        reply_msg = await nc.request(subject, payload, timeout=timeout_s)
    except nats.errors.NoRespondersError:
        raise CommandTimeout(subject, timeout_s, no_responders=True) from None
    except (asyncio.TimeoutError, nats.errors.TimeoutError):
        raise CommandTimeout(subject, timeout_s) from None
    try:
        reply = proto.parse(proto.decode(reply_msg.data), proto.Reply)
    except proto.MessageRejected as exc:
        raise CommandFailed(subject, f"invalid reply: {exc}") from None
    if not reply.ok:
        raise CommandFailed(subject, reply.error)
    return reply.result


class HandlerError(Exception):
    """Raised by a handler to return an error reply without logging a traceback."""


async def connect(
    url: str | list[str], name: str, log: Any,
    error_cb: Callable[[Exception], Awaitable[None]] | None = None, **options: Any,
) -> nats.NATS:
    """Connect with dcfleet's timeouts; `options` (credentials, TLS) go to nats.connect."""

    async def on_error(exc: Exception) -> None:
        log.warning("bus.error", error=str(exc), error_type=type(exc).__name__)
        if error_cb is not None:
            await error_cb(exc)

    async def on_disconnected() -> None:
        log.warning("bus.disconnected")

    async def on_reconnected() -> None:
        log.info("bus.reconnected")

    return await nats.connect(
        url,
        name=name,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        ping_interval=PING_INTERVAL_S,
        max_outstanding_pings=MAX_OUTSTANDING_PINGS,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        **options,
    )


async def ensure_event_stream(js: Any, replicas: int = 1) -> None:
    config = StreamConfig(
        name=subjects.EVENTS_STREAM,
        subjects=[subjects.EVENTS_ALL],
        storage=StorageType.FILE,
        duplicate_window=120.0,
        num_replicas=replicas,
    )
    try:
        await js.add_stream(config)
    except BadRequestError:
        # The stream exists with another configuration; use it as it is.
        await js.stream_info(subjects.EVENTS_STREAM)


class Agent:
    """One agent process. Subclasses set `kind` and fill start() and stop()."""

    kind = "agent"

    def __init__(self, config: ClusterConfig, agent_id: str) -> None:
        self.config = config
        self.id = agent_id
        self.source = f"{self.kind}.{agent_id}" if agent_id != self.kind else self.kind
        self.clock = config.clock
        self.log = structlog.get_logger().bind(agent=self.source)
        self.nc: nats.NATS | None = None
        self.js: Any = None
        self._tasks: set[asyncio.Task] = set()
        self._stopping = asyncio.Event()
        self._stop_reason = "signal"

    # ---- lifecycle ---------------------------------------------------------

    async def run(self, handle_signals: bool = True) -> None:
        """Run until stopped; a process running many agents passes handle_signals=False."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM) if handle_signals else ():
            loop.add_signal_handler(signum, self.request_stop, f"signal {signal.Signals(signum).name}")
        self.nc = await connect(
            _bus.server_urls(self.config), self.source, self.log,
            error_cb=self._on_bus_error, **_bus.connect_options(self.config, self.source),
        )
        self.js = self.nc.jetstream()
        await ensure_event_stream(self.js, self.config.event_replicas)
        try:
            await self.start()
            await self.publish(proto.AgentStarted(agent=self.source, kind=self.kind, pid=os.getpid()))
            self.log.info("agent.started", pid=os.getpid())
            await self._stopping.wait()
        finally:
            await self._shutdown()

    async def _on_bus_error(self, exc: Exception) -> None:
        await _bus.on_agent_bus_error(self, exc)

    def request_stop(self, reason: str = "requested") -> None:
        if not self._stopping.is_set():
            # A stop can hang on a broker that died with a killed supervisor (a start still
            # reading the stream, a drain): past the deadline, leave without the clean steps.
            asyncio.get_running_loop().call_later(STOP_DEADLINE_S, self._stop_overdue)
        self._stop_reason = reason
        self._stopping.set()

    def _stop_overdue(self) -> None:
        self.log.error("agent.stop_overdue", reason=self._stop_reason, deadline_s=STOP_DEADLINE_S)
        os._exit(1)

    async def _shutdown(self) -> None:
        try:
            await self.stop()
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self.nc is not None:
                await self._close_bus()
            self.log.info("agent.stopped", reason=self._stop_reason)

    async def _close_bus(self) -> None:
        """Publish agent.stopped and drain; when the broker is gone, close without waiting for it.

        A supervisor killed with SIGKILL takes its broker with it, so a stop
        may find the connection lost or reconnecting.
        """
        assert self.nc is not None
        if self.nc.is_connected:
            stopped = proto.AgentStopped(agent=self.source, kind=self.kind, reason=self._stop_reason)
            try:
                await asyncio.wait_for(self.publish(stopped), STOP_EVENT_TIMEOUT_S)
            except Exception as exc:  # the broker may already be gone
                self.log.warning("agent.stop_event_failed", error=repr(exc))
        if self.nc.is_connected:
            # drain() flushes what the client still buffers; close() alone can drop it.
            try:
                await self.nc.drain()
                return
            except (nats.errors.ConnectionReconnectingError, nats.errors.ConnectionClosedError):
                pass
        await self.nc.close()

    async def start(self) -> None:
        """Subscribe and start background work."""

    async def stop(self) -> None:
        """Finish in-flight work before the connection drains."""

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.log.error("task.crashed", task=task.get_name(), error=repr(exc), exc_info=exc)

    # ---- messages ----------------------------------------------------------

    def envelope(self, message: proto.Message) -> bytes:
        return proto.encode(proto.Envelope(type=message.TYPE, source=self.source, data=message.to_data()))

    def event_envelope(self, message: proto.Message) -> proto.Envelope:
        return proto.Envelope(type=message.TYPE, source=self.source, data=message.to_data())

    async def publish(self, message: proto.Message, envelope: proto.Envelope | None = None) -> None:
        """Publish an event to the durable event stream and wait for its ack.

        Passing the envelope of an earlier attempt, possibly from a process that
        died, stores the event at most once: the stream drops a repeated id
        within its duplicate window (120 s, set by ensure_event_stream).
        """
        envelope = envelope or self.event_envelope(message)

        async def publish_once() -> None:
            await self.js.publish(
                subjects.event_from(self.source, message.TYPE),
                proto.encode(envelope),
                headers={"Nats-Msg-Id": envelope.id},
            )

        # While the broker restarts, retry with the same Nats-Msg-Id: the stream
        # stores the event once even if an earlier attempt was stored unacknowledged.
        await retry(publish_once, PUBLISH_RETRY_ERRORS, PUBLISH_RETRY_S)
        _metrics.event_published(self.source, message)

    async def request(self, subject: str, message: proto.Message, timeout_s: float = 5.0) -> dict[str, Any]:
        """Send a command and return the result of a successful reply."""
        _metrics.message_sent(self.source, "command")
        return await send_command(self.nc, subject, self.envelope(message), timeout_s)

    async def serve(
        self,
        subject: str,
        handlers: dict[type[proto.Message], Handler],
        *,
        concurrent: bool = True,
        queue: str = "",
        match_operation: bool = True,
    ) -> None:
        """Subscribe to commands and dispatch each by its message type.

        With match_operation, a message's type must name the subject's last
        token as its operation (`host.power` only on `....power`), so subject
        permissions on the broker also limit which commands a sender can give.
        Malformed or unexpected messages get an error reply and an
        `agent.message_rejected` event; the agent keeps running.
        """

        async def on_message(msg: Msg) -> None:
            if concurrent:
                self.spawn(self._dispatch(msg, handlers, match_operation), f"handle {msg.subject}")
            else:
                await self._dispatch(msg, handlers, match_operation)

        await self.nc.subscribe(subject, queue=queue, cb=on_message)

    async def _dispatch(
        self, msg: Msg, handlers: dict[type[proto.Message], Handler], match_operation: bool = True
    ) -> None:
        try:
            envelope = proto.decode(msg.data)
            message = proto.parse(envelope)
            handler = handlers.get(type(message))
            operation = msg.subject.rsplit(".", 1)[-1]
            if handler is None or (match_operation and envelope.type.split(".", 1)[-1] != operation):
                raise proto.MessageRejected("unexpected-type", f"{envelope.type!r} is not served on {msg.subject}")
        except proto.MessageRejected as exc:
            await self.reject(msg, exc)
            return
        self.log.debug("command.received", subject=msg.subject, type=envelope.type, id=envelope.id)
        try:
            with _metrics.handling(self.source, envelope.type):
                result = await handler(message, msg)
        except HandlerError as exc:
            await self._reply(msg, proto.Reply(ok=False, error=str(exc)))
            return
        except Exception as exc:
            self.log.exception("command.failed", subject=msg.subject, type=envelope.type)
            await self._reply(msg, proto.Reply(ok=False, error=f"internal error: {exc!r}"))
            return
        await self._reply(msg, proto.Reply(ok=True, result=result or {}))

    async def reject(self, msg: Msg, exc: proto.MessageRejected) -> None:
        self.log.warning("message.rejected", subject=msg.subject, reason=exc.reason, detail=exc.detail)
        await self._reply(msg, proto.Reply(ok=False, error=f"rejected: {exc}"))
        try:
            await self.publish(
                proto.AgentMessageRejected(
                    agent=self.source, subject=msg.subject, reason=exc.reason, detail=exc.detail[:500]
                )
            )
        except Exception as publish_exc:
            self.log.warning("event.publish_failed", error=str(publish_exc))

    async def _reply(self, msg: Msg, reply: proto.Reply) -> None:
        if not msg.reply:
            return
        try:
            await msg.respond(self.envelope(reply))
        except Exception as exc:
            self.log.warning("reply.failed", subject=msg.subject, error=str(exc))
