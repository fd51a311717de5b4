"""pushgate: a real-time push gateway (WebSocket/SSE fan-out, one node or a Redis-joined cluster)."""

from __future__ import annotations

__version__ = "0.1.0"

from .app import App, ClientInfo
from .errors import (
    AuthError,
    BrokerUnavailable,
    ClientError,
    CloseCode,
    ConfigError,
    PushgateError,
    Reject,
)
from .publisher import Publisher

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
