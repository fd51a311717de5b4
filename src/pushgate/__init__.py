"""pushgate: a real-time push gateway (WebSocket/SSE fan-out, one node or a Redis-joined cluster).

The server-side names (:class:`App`, :class:`ClientInfo`, :class:`Publisher`) are imported on
first use (PEP 562), so ``import pushgate.client`` in an application loads only the client and
the exception tree, not the server, the broker backends or their dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    AuthError,
    BrokerUnavailable,
    ClientError,
    CloseCode,
    ConfigError,
    PushgateError,
    Reject,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .app import App, ClientInfo, SendTo, SendToUser
    from .publisher import Publisher

_LAZY = {"App": "app", "ClientInfo": "app", "SendTo": "app", "SendToUser": "app", "Publisher": "publisher"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pushgate' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


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
    "SendTo",
    "SendToUser",
    "__version__",
]
