"""One logging policy for every dcfleet process.

Key-value lines on a terminal, JSON lines otherwise. DEBUG per message, INFO
per state change, `exception` only for the unexpected.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog


def quiet_tls_close() -> None:
    """Drop asyncio's warning that nats-py's TLS transport ignores a true eof_received().

    asyncio logs it each time a TLS connection to the broker closes, and the
    client closes correctly regardless, so a command's output carries only noise.
    """
    logging.getLogger("asyncio").addFilter(_not_tls_eof_warning)


def _not_tls_eof_warning(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("returning true from eof_received() has no effect when using ssl")


def configure(level: str | None = None, **bound: str) -> structlog.stdlib.BoundLogger:
    level_name = (level or os.environ.get("DCFLEET_LOG_LEVEL", "INFO")).upper()
    numeric = logging.getLevelName(level_name)
    if not isinstance(numeric, int):
        raise ValueError(f"invalid log level {level_name!r}")
    renderer: structlog.typing.Processor
    if sys.stderr.isatty():
        renderer = structlog.dev.ConsoleRenderer(colors=True)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger().bind(**bound)
