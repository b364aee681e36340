"""Short reasons for failed HTTP requests, for events and error messages.

aiohttp's exception reprs carry connection keys, SSL context objects and
proxy fields; a reason names the address and what went wrong.
"""

from __future__ import annotations

import asyncio
import os

import aiohttp


def describe_http_error(exc: BaseException, timeout_s: float | None = None) -> str:
    """Return a one-line reason for a failed request, e.g. `cannot connect to 10.0.0.4:443: Network is unreachable`."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        # str(exc) embeds the SSL context's repr; the OS error carries the reason. asyncio words a
        # refused connection as "Connect call failed (...)", so the errno's standard text comes first.
        error = exc.os_error
        reason = os.strerror(error.errno) if error.errno else (error.strerror or str(error) or type(error).__name__)
        return f"cannot connect to {exc.host}:{exc.port}: {reason}"
    text = str(exc).strip()
    if isinstance(exc, asyncio.TimeoutError):
        limit = f" within {timeout_s:g} s" if timeout_s else ""
        return f"no response{limit}" + (f" ({text})" if text else "")
    return text or type(exc).__name__
