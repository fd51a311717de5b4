"""Logging set-up for ``pushgate serve``: text or JSON lines, and the optional access log.

Operators ship logs to something that parses them, so ``log_format = "json"`` writes one JSON
object per line (``ts``, ``level``, ``logger``, ``msg``, plus any structured fields a record
carries: the access log's ``method``, ``path``, ``status``...). A traceback, when there is
one, stays inside its record (``exc``) instead of spilling over many lines.

The access log (``access_log = true``) has one line per request; a WebSocket or SSE session is
one request, logged when it ends, so its duration is the session's. The query string is never
logged: browsers pass ``?token=<JWT>`` there, and a log is no place for credentials.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from .web.peer import client_address

#: LogRecord attributes that are not extra fields (everything ``logging`` sets itself).
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

ACCESS_LOGGER = "pushgate.access"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``extra={...}`` fields become keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, str | int | float | bool | None) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str, fmt: str) -> None:
    """Send pushgate's (and aiohttp's) records to stderr at ``level`` in ``fmt`` (text | json)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


class AccessLog(AbstractAccessLogger):
    """aiohttp's access-log hook: one line per finished request, with structured fields.

    ``remote`` is the client as the rest of pushgate sees it (``X-Forwarded-For`` and friends
    believed only from ``trusted_proxies``, :mod:`pushgate.web.peer`); build the class for a
    configuration with :func:`access_log_class`.
    """

    trusted_proxies: tuple[str, ...] = ()

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        path = request.rel_url.path  # never the query: it may carry ?token=
        remote = client_address(request, self.trusted_proxies)
        self.logger.info(
            '%s "%s %s" %d %dB %.1fms', remote, request.method, path, response.status,
            response.body_length, time * 1000,
            extra={"remote": remote, "method": request.method, "path": path,
                   "status": response.status, "bytes": response.body_length,
                   "duration_ms": round(time * 1000, 3), "user_agent": request.headers.get("User-Agent", "")},
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def access_log_class(trusted_proxies: tuple[str, ...]) -> type[AccessLog]:
    """:class:`AccessLog` that names clients behind these proxies (aiohttp instantiates it)."""
    return type("AccessLog", (AccessLog,), {"trusted_proxies": tuple(trusted_proxies)})


__all__ = ["ACCESS_LOGGER", "AccessLog", "JsonFormatter", "access_log_class", "configure_logging"]
