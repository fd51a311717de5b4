"""The web edge: the aiohttp application, the HTTP API, and the WebSocket and SSE transports.

``build_app(node)`` (in :mod:`pushgate.web.app`) mounts everything. It is imported on first
use (PEP 562) because the node imports :mod:`pushgate.web.connection` from this package, and
that must not pull in aiohttp's server, the API and the transports (nor import them back).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import build_app

__all__ = ["build_app"]


def __getattr__(name: str) -> Any:
    if name != "build_app":
        raise AttributeError(f"module 'pushgate.web' has no attribute {name!r}")
    from .app import build_app

    return build_app
