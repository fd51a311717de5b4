"""The client connection as the hub and node see it; every transport subclasses it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from ..protocol.outgoing import Outgoing


class Connection(ABC):
    """A client connection as the hub and node see it; transports subclass it."""

    transport_name = "?"

    def __init__(self, conn_id: str, user: str | None, claims: dict[str, Any] | None = None) -> None:
        self.id = conn_id
        self.user = user
        self.claims = claims
        self.channels: set[str] = set()
        self.closed = False

    @abstractmethod
    def send(self, out: Outgoing) -> None:
        """Queue a frame without blocking. Hot path: must not encode, await or raise."""

    @abstractmethod
    def close(self, code: int, reason: str) -> None:
        """Start closing with ``code`` (see :class:`~pushgate.errors.CloseCode`); returns at once."""

    def send_payload(self, payload: bytes) -> None:
        self.send(Outgoing(payload))

    def flush(self) -> None:  # noqa: B027 - a no-op for transports that write at once
        """Write what :meth:`send` queued (transports that coalesce writes override this)."""
