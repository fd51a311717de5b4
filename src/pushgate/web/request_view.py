"""What the one handshake reads of a request, whichever HTTP layer parsed it.

:func:`pushgate.web.handshake.accept` decides from the method, the path, the query, the headers
and the TCP peer's address, nothing else. Two layers parse requests: aiohttp (every route, and
``/ws`` when the application is mounted inside someone else's aiohttp app) and the server's own
front protocol (:mod:`pushgate.web.lean`), which answers plain WebSocket upgrades on ``/ws``
without building an aiohttp request. Both build a :class:`RequestView`, so refusals, their
classification and the connect hooks are written once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy, MultiMapping

if TYPE_CHECKING:
    from aiohttp import web


@dataclass(frozen=True, slots=True)
class RequestView:
    """The protocol-neutral parts of one HTTP request (read-only multidicts, like aiohttp's)."""

    method: str
    path: str
    query: MultiMapping[str]
    headers: CIMultiDictProxy[str]
    remote: str | None  # the TCP peer's address (forwarding headers are read by peer.py)

    @classmethod
    def of(cls, request: web.BaseRequest) -> RequestView:
        """The view of an aiohttp request (its multidicts are shared, not copied)."""
        return cls(request.method, request.path, request.query, request.headers, request.remote)

    @classmethod
    def build(cls, method: str, path: str, query: list[tuple[str, str]], headers: list[tuple[str, str]],
              remote: str | None) -> RequestView:
        """A view from parsed parts (the front protocol's head parser)."""
        return cls(method, path, MultiDictProxy(MultiDict(query)), CIMultiDictProxy(CIMultiDict(headers)), remote)

    def with_query(self, updates: Mapping[str, str]) -> RequestView:
        """The same request with ``updates`` replacing those query parameters (STOMP's CONNECT
        credentials are admitted as if they had been in the query)."""
        query = MultiDict(self.query)
        query.update(updates)
        return RequestView(self.method, self.path, MultiDictProxy(query), self.headers, self.remote)


__all__ = ["RequestView"]
