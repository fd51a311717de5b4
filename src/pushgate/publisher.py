"""Publish from a backend without HTTP, straight through the cluster's broker.

The Python counterpart of Spring's ``SimpMessagingTemplate.convertAndSend`` /
``convertAndSendToUser``::

    async with pushgate.Publisher("redis://127.0.0.1:6379/0") as pub:
        await pub.publish("news", {"headline": "..."})        # to a channel (kept in history)
        await pub.send_to_users(["alice"], {"text": "hi"})     # to every device of these users
        await pub.broadcast({"maintenance": True})             # to everyone
        await pub.disconnect_user("mallory")                   # close their connections (4500)

Publications go through the same atomic publish-and-append as a node's, so offsets, history
and recovery are identical whichever way a message entered the cluster. Pass the nodes'
configuration (``config=pushgate.config.load_config(file="pushgate.toml")``) and every channel
keeps exactly the history a node would give it, its namespace's ``history_size`` and
``history_ttl`` included; without it, use the same ``prefix`` and history settings as the nodes
(which then apply to every channel: a publisher without the config knows no namespaces).

A publisher only sends: its broker is started publish-only (``start(None)``), so it opens the
command connection and no pub/sub connection, subscribes to nothing and receives nothing.
Names are checked with :mod:`pushgate.names` and data with :func:`pushgate.payload.check_data`
(nested no deeper than ``max_json_depth``, like at a node's doors) before anything is sent; data
msgspec cannot encode as JSON (lone surrogates, unsupported types) is refused the same way, as
:class:`~pushgate.errors.ClientError` ``bad_request``. A broker that cannot be reached, or does
not answer within ``broker_timeout``, raises :class:`pushgate.errors.BrokerUnavailable`; a
publish retried with the same ``idempotency_key`` within ``idempotency_window`` seconds is not
applied twice (use the nodes' window; the Redis key lives that long whoever wrote it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import msgspec

from .backends import create_stores
from .backends.broker import Broker, HistoryOptions, StreamPosition, UserMessage
from .backends.idempotency import check_idempotency_key
from .backends.lease import LeaseStore
from .config import Config
from .errors import ClientError, CloseCode
from .names import user_stream, valid_channel, valid_destination, valid_users
from .payload import DEFAULT_MAX_DEPTH, check_data
from .protocol import jsonwire
from .receipts import AckWaiter, Receipts


class Publisher:
    """Publishes into a pushgate cluster through its broker (see the module docstring)."""

    def __init__(self, url: str, *, prefix: str = "pg", history_size: int = 100,
                 history_ttl: float = 300.0, broker_timeout: float = 5.0,
                 idempotency_window: float = 120.0, max_json_depth: int = DEFAULT_MAX_DEPTH,
                 user_history_size: int = 100, user_history_ttl: float = 86400.0,
                 config: Config | None = None) -> None:
        if config is not None:  # the nodes' settings win: per-channel history must not depend on the path
            prefix, broker_timeout, max_json_depth = config.redis_prefix, config.broker_timeout, config.max_json_depth
            idempotency_window = config.idempotency_window
            user_history_size, user_history_ttl = config.user_history_size, config.user_history_ttl
        self._config = config
        broker, _presence, leases = create_stores(
            url, prefix=prefix, broker_timeout=broker_timeout, idempotency_window=idempotency_window,
            publish_max_in_flight=config.broker_publish_max_in_flight if config is not None else None,
        )
        self._broker: Broker = broker
        self._leases: LeaseStore = leases  # once-only claims for broadcast idempotency keys
        self._idempotency_window = idempotency_window
        self._history = HistoryOptions(history_size, history_ttl)
        self._user_history = HistoryOptions(user_history_size, user_history_ttl)
        self._max_depth = max_json_depth
        self._started = False

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def start(self) -> None:
        if not self._started:
            await self._broker.start(None)  # publish-only: no pub/sub link
            self._started = True

    async def close(self) -> None:
        if self._started:
            await self._broker.close()
            self._started = False

    async def publish(self, channel: str, data: Any, *, idempotency_key: str | None = None) -> StreamPosition:
        """Publish ``data`` (encoded as JSON) to ``channel``; returns its position in history.

        With ``idempotency_key`` (1-128 of ``A-Z a-z 0-9 _ . : ~ + / = -``), a retry within the
        idempotency window returns the first publication's position instead of publishing again.
        """
        payload = self._encode(data)
        await self.start()
        history = self._history if self._config is None else HistoryOptions(*self._config.history_for(channel))
        return await self._broker.publish(valid_channel(channel), payload, history,
                                          idempotency_key=idempotency_key)

    async def send_to_users(
        self,
        users: Sequence[str],
        data: Any,
        *,
        sender: str | None = None,
        idempotency_key: str | None = None,
        destination: str | None = None,
    ) -> dict[str, StreamPosition]:
        """Append ``data`` to each user's stream, exactly as a node does: delivered now to every
        connection of the user, or when one connects within retention. Returns each message's
        position per user; an ``idempotency_key`` makes a retry safe."""
        targets = valid_users(users)
        envelope = jsonwire.direct_envelope(
            sender, self._encode(data), None if destination is None else valid_destination(destination)
        )
        await self.start()
        positions = await asyncio.gather(*(
            self._broker.publish(user_stream(u), envelope, self._user_history, idempotency_key=idempotency_key)
            for u in targets
        ))
        return dict(zip(targets, positions, strict=True))

    async def wait_for_acks(self, positions: dict[str, StreamPosition], timeout: float) -> dict[str, bool]:
        """Delivery receipts: wait (at most ``timeout`` s) until each user has acknowledged its
        message at ``positions[user]`` (as :meth:`send_to_users` returned them); per user,
        whether it did. The node's :class:`~pushgate.receipts.Receipts`, fed only by the stored
        acks (a publisher has no pub/sub link for ack notices, so it cannot name connections;
        ``POST /api/send`` with ``wait_for_ack`` does)."""
        await self.start()
        waiters = {user: AckWaiter() for user in positions}
        acked = await Receipts(self._broker, waiters, max(0.0, timeout)).wait(positions, timeout)
        return {user: conns is not None for user, conns in acked.items()}

    async def broadcast(self, data: Any, *, idempotency_key: str | None = None) -> bool:
        """Deliver to every connection on every node; with an ``idempotency_key`` a retry within
        the window is not delivered again (cluster-wide). Returns whether it was sent now."""
        payload = self._encode(data)
        await self.start()
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
            if not await self._leases.claim_once(f"idem:b:{idempotency_key}", self._idempotency_window):
                return False
        await self._broker.broadcast(payload)
        return True

    def _encode(self, data: Any) -> bytes:
        """JSON bytes of ``data`` that every door would accept, else ClientError ``bad_request``."""
        try:
            payload = msgspec.json.encode(data)
        except (TypeError, ValueError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
            raise ClientError("bad_request", f"data cannot be encoded as JSON: {exc}") from None
        return check_data(payload, max_depth=self._max_depth)

    async def disconnect_user(self, user: str, reason: str = "disconnected by server") -> None:
        await self.start()
        message = UserMessage("disconnect", code=int(CloseCode.DISCONNECTED), reason=reason)
        await self._broker.send_to_users(valid_users([user]), message)
