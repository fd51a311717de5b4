"""Who is connecting (:class:`Authenticator`) and what they may do (:class:`Authorizer`).

Authentication: JWT verification (or dev-mode ``?user=``) and origin checks, once per handshake,
for every transport. Authorization: every client operation (subscribe, publish, presence,
history, send) asks the one :class:`Authorizer`, whichever transport it came through. Calls from
the HTTP API and embedding code are the backend's own and are not checked here (the API key
guards them).

The JWT algorithm is pinned to the configured key type (HS256 for a secret; RS256/ES256 for a
public key), so a token can never choose its own algorithm and ``alg: none`` is always refused.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import jwt

from .config import Config
from .errors import AuthError, ClientError, ConfigError
from .names import CHANNEL_RE

if TYPE_CHECKING:
    from .app import App, ClientInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Identity:
    """The authenticated peer: ``user`` is None for anonymous connections."""

    user: str | None
    claims: dict[str, Any] | None = None  # a `channels` claim (glob patterns) limits subscribes


class Authenticator:
    """Turns handshake credentials into an :class:`Identity` or raises :class:`AuthError`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._key: Any = None
        self._algorithms: list[str] = []
        if config.jwt_secret:
            self._key, self._algorithms = config.jwt_secret, ["HS256"]
        elif config.jwt_public_key:
            pem = config.jwt_public_key
            if "-----BEGIN" not in pem:
                try:
                    pem = Path(pem).read_text()
                except OSError as exc:
                    raise ConfigError("jwt_public_key", f"cannot read {pem}: {exc.strerror}") from exc
            self._key, self._algorithms = _load_public_key(pem)

    @property
    def dev_mode(self) -> bool:
        return not self._algorithms

    def identify(self, *, token: str | None, user: str | None) -> Identity:
        """Dev mode: trust ``user``. JWT mode: require a valid token; ``sub`` is the user id."""
        if self.dev_mode:
            if user is not None and not CHANNEL_RE.match(user):
                raise AuthError("invalid user id", status=400)
            return Identity(user=user or None)
        if not token:
            raise AuthError("a token is required (?token= or Authorization: Bearer)")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self.config.jwt_audience,
                issuer=self.config.jwt_issuer,
                options={"require": ["sub"], "verify_aud": self.config.jwt_audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from exc
        sub = claims.get("sub")
        if not isinstance(sub, str) or not CHANNEL_RE.match(sub):
            raise AuthError("token `sub` must be a valid user id")
        channels = claims.get("channels")
        if channels is not None and not (
            isinstance(channels, list) and all(isinstance(c, str) for c in channels)
        ):
            raise AuthError("token `channels` must be a list of strings")
        return Identity(user=sub, claims=claims)

    def check_origin(self, origin: str | None) -> None:
        """Refuse cross-site WebSocket hijacking when ``allowed_origins`` is configured."""
        patterns = self.config.allowed_origins
        if not patterns:
            return
        if origin is None or not any(fnmatch.fnmatchcase(origin, p) for p in patterns):
            raise AuthError(f"origin {origin!r} is not allowed", status=403)


class Subject(Protocol):
    """Whoever asks: a connection or a :class:`~pushgate.app.ClientInfo` (user and token claims)."""

    @property
    def user(self) -> str | None: ...

    @property
    def claims(self) -> dict[str, Any] | None: ...


class Authorizer:
    """The one place that decides whether a client may do something; raises ``ClientError``.

    Rules, in the order they are checked:

    * **subscribe**: the channel's namespace (``subscribe = "authenticated"`` refuses anonymous
      connections), the token's ``channels`` claim (glob patterns; absent = any channel), then
      the application's ``on_subscribe`` hooks (which may raise :class:`~pushgate.errors.Reject`).
    * **publish**: the namespace's ``publish`` switch (default: allowed in dev mode, refused
      with JWT; ``client_publish`` changes the default).
    * **presence**, **history**: allowed.
    * **send**: only a named user may send (the server stamps the sender; an anonymous
      connection has nothing to stamp).

    Every denial is ``permission_denied`` with a message that names the rule, never a 500.
    """

    def __init__(self, config: Config, app: App | None = None) -> None:
        self.config = config
        self.app = app

    async def subscribe(self, who: ClientInfo, channel: str) -> None:
        ns = self.config.namespace(channel)
        if ns.subscribe == "authenticated" and who.user is None:
            raise ClientError("permission_denied", "this namespace needs an authenticated user")
        if not token_allows(who.claims, channel):
            raise ClientError("permission_denied", f"token does not allow {channel!r}")
        if self.app is not None:
            from .app import call_maybe_async

            for hook in self.app.subscribe_hooks:
                await call_maybe_async(hook, who, channel)

    def publish(self, who: Subject, channel: str) -> None:
        if not self.config.client_may_publish(channel):
            raise ClientError("permission_denied", f"clients may not publish to {channel!r}")

    def presence(self, who: Subject, channel: str) -> None:
        """Allowed to everyone today; the hook point for per-namespace presence rules."""

    def history(self, who: Subject, channel: str) -> None:
        """Allowed to everyone today; the hook point for per-namespace history rules."""

    def send(self, who: Subject, users: Sequence[str]) -> None:
        if who.user is None:
            raise ClientError("permission_denied", "anonymous connections cannot send: no sender to stamp")


def token_allows(claims: dict[str, Any] | None, channel: str) -> bool:
    """True unless the token's ``channels`` claim is a list none of whose patterns matches."""
    patterns = (claims or {}).get("channels")
    if not isinstance(patterns, list):
        return True
    return any(isinstance(p, str) and fnmatch.fnmatchcase(channel, p) for p in patterns)


def _load_public_key(pem: str) -> tuple[Any, list[str]]:
    """Load a PEM public key and pin the one algorithm its type allows."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise ConfigError("jwt_public_key", f"not a PEM public key: {exc}") from exc
    if isinstance(key, rsa.RSAPublicKey):
        return key, ["RS256"]
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key, ["ES256"]
    raise ConfigError("jwt_public_key", "only RSA (RS256) and EC P-256 (ES256) keys are supported")
