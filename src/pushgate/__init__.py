"""pushgate: a real-time push gateway (WebSocket/SSE fan-out, one node or a Redis-joined cluster)."""

from __future__ import annotations

__version__ = "0.1.0"

from .app import App, ClientInfo  # noqa: E402
from .publisher import Publisher  # noqa: E402
from .errors import (  # noqa: E402
    AuthError,
    BrokerUnavailable,
    ClientError,
    CloseCode,
    ConfigError,
    PushgateError,
    Reject,
)

__all__ = [
    "App",
    "AuthError",
    "BrokerUnavailable",
    "ClientError",
    "ClientInfo",
    "CloseCode",
    "ConfigError",
    "Publisher",
    "PushgateError",
    "Reject",
    "__version__",
]
