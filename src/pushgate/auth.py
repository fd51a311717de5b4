"""Who is connecting (:class:`Authenticator`) and what they may do (:class:`Authorizer`).

Authentication: JWT verification (a shared secret, a public key or a JWKS URL; or dev-mode
``?user=``) and origin checks, once per handshake, for every transport; the same verification
answers a connection's ``refresh`` command. Authorization: every client operation (subscribe,
publish, presence, history, send) asks the one :class:`Authorizer`, whichever transport it came
through. Calls from the HTTP API and embedding code are the backend's own and are not checked
here (the API key guards them).

The JWT algorithm is pinned to the configured key type (HS256 for a secret; RS256/ES256 for a
public key; the key's own algorithm for a JWKS key, never an HMAC one), so a token can never
choose its own algorithm and ``alg: none`` is always refused.

:func:`startup_warnings` and :func:`secret_problems` judge the configured secrets: the server
logs the first at start-up, and ``production = true`` refuses to start on the second.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import jwt

from .config import Config
from .errors import AuthError, ClientError, ConfigError
from .names import CHANNEL_RE

if TYPE_CHECKING:
    from .app import App, ClientInfo

log = logging.getLogger(__name__)

#: Claims that, when present, must be lists of glob patterns (``channels``: channel names the
#: token may use; ``send``: users the token may send to).
PATTERN_CLAIMS = ("channels", "send")


@dataclass(frozen=True, slots=True)
class Identity:
    """The authenticated peer: ``user`` is None for anonymous connections."""

    user: str | None
    claims: dict[str, Any] | None = None  # `channels` / `send` claims (globs) limit what it may do

    @property
    def expires(self) -> float | None:
        """The token's ``exp`` (Unix seconds), or None when it does not expire."""
        return token_expiry(self.claims)


def token_expiry(claims: dict[str, Any] | None) -> float | None:
    """``exp`` of verified ``claims`` as Unix seconds, or None (no token, or no ``exp``)."""
    exp = (claims or {}).get("exp")
    if isinstance(exp, int | float) and not isinstance(exp, bool) and math.isfinite(exp):
        return float(exp)
    return None


class Authenticator:
    """Turns handshake credentials into an :class:`Identity` or raises :class:`AuthError`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._key: Any = None
        self._algorithms: list[str] = []
        self._jwks: JwksKeys | None = None
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
        elif config.jwks_url:
            self._jwks = JwksKeys(config.jwks_url)

    @property
    def dev_mode(self) -> bool:
        return not self._algorithms and self._jwks is None

    async def identify(self, *, token: str | None, user: str | None) -> Identity:
        """Dev mode: trust ``user``. JWT mode: require a valid token; ``sub`` is the user id.

        Async because a JWKS key may have to be fetched (off the event loop) first.
        """
        if self.dev_mode:
            if user is not None and not CHANNEL_RE.match(user):
                raise AuthError("invalid user id", status=400)
            return Identity(user=user or None)
        if not token:
            raise AuthError("a token is required (?token= or Authorization: Bearer)")
        return await self.verify(token)

    async def verify(self, token: str) -> Identity:
        """Verify a JWT (signature, ``exp``, ``aud``/``iss`` when configured, required claims).

        Raises :class:`AuthError` (401) for a bad token, ``ClientError("unavailable")`` when the
        JWKS cannot be fetched and no key is known yet. Only meaningful outside dev mode.
        """
        if self._jwks is not None:
            jwk = await self._jwks.key_for(token)
            key, algorithms = jwk.key, [jwk.algorithm_name]
        else:
            key, algorithms = self._key, self._algorithms
        required = ["sub", "exp"] if self.config.jwt_require_exp else ["sub"]
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.config.jwt_audience,
                issuer=self.config.jwt_issuer,
                options={"require": required, "verify_aud": self.config.jwt_audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from exc
        sub = claims.get("sub")
        if not isinstance(sub, str) or not CHANNEL_RE.match(sub):
            raise AuthError("token `sub` must be a valid user id")
        for name in PATTERN_CLAIMS:
            value = claims.get(name)
            if value is not None and not (isinstance(value, list) and all(isinstance(c, str) for c in value)):
                raise AuthError(f"token `{name}` must be a list of strings")
        return Identity(user=sub, claims=claims)

    def check_origin(self, origin: str | None, *, missing_is_same_origin: bool = False) -> None:
        """Refuse cross-site connections when ``allowed_origins`` is configured.

        Browsers always send ``Origin`` on a WebSocket handshake, so a missing one is refused
        there. On a same-origin ``GET`` (an ``EventSource``) they send none, while a cross-site
        one carries it: the SSE handshake passes ``missing_is_same_origin=True``.
        """
        patterns = self.config.allowed_origins
        if not patterns:
            return
        if origin is None and missing_is_same_origin:
            return
        if origin is None or not any(fnmatch.fnmatchcase(origin, p) for p in patterns):
            raise AuthError(f"origin {origin!r} is not allowed", status=403)


class JwksKeys:
    """The signing keys of a JWKS URL, fetched with PyJWT's :class:`jwt.PyJWKClient`, cached.

    PyJWKClient does the fetching and parsing; the cache policy is ours because it must suit a
    server on an event loop:

    * fetches run in a thread (``asyncio.to_thread``: urllib blocks) and one at a time
      (concurrent handshakes wait for the same fetch instead of each fetching);
    * a token whose ``kid`` is unknown triggers a refetch at once, so a key the identity
      provider just rotated in is accepted on its first use;
    * but after a refetch that still did not know the ``kid``, further unknown ``kid``s are
      refused without fetching for :attr:`MISS_COOLDOWN` seconds: tokens with random ``kid``s
      must not turn every handshake into a request to the identity provider;
    * the set is refetched when older than :attr:`LIFESPAN`, so a key removed from the JWKS
      (revoked) stops verifying; while that refetch is in flight other handshakes use the known
      key, and if it fails the known keys keep working (an outage of the identity provider must
      not lock everyone out) and the next attempt waits :attr:`MISS_COOLDOWN`;
    * with no key known at all, a failed fetch is ``unavailable`` (503: retry), and for
      :attr:`FAILURE_BACKOFF` handshakes get that answer at once instead of queueing fetches.

    HMAC (``oct``) keys and keys marked ``use: enc`` are ignored: a public JWKS with a shared
    secret in it would let anyone sign.
    """

    LIFESPAN = 300.0
    MISS_COOLDOWN = 10.0
    FAILURE_BACKOFF = 1.0
    FETCH_TIMEOUT = 5.0

    def __init__(self, url: str) -> None:
        self.url = url
        self._client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=self.FETCH_TIMEOUT)
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # time.monotonic() of the last successful fetch
        self._missed_at = -math.inf  # the last refetch that did not find the kid it was for
        self._failed_at = -math.inf  # the last fetch that failed
        self._lock = asyncio.Lock()

    async def key_for(self, token: str) -> jwt.PyJWK:
        """The key named by the token's ``kid`` header; raises :class:`AuthError` if none."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from exc
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("invalid token: no `kid` header to pick a JWKS key with")
        key = self._keys.get(kid)
        if key is None or self._stale():
            if key is not None and self._lock.locked():
                return key  # a refetch is in flight: the known key is good until it replaces it
            await self._refresh(kid)
        key = self._keys.get(kid)
        if key is None:
            raise AuthError(f"invalid token: unknown signing key {kid[:64]!r}")
        return key

    def _stale(self) -> bool:
        return self._fetched_at is None or time.monotonic() - self._fetched_at > self.LIFESPAN

    async def _refresh(self, kid: str) -> None:
        async with self._lock:
            now = time.monotonic()
            if not self._stale():
                if kid in self._keys:
                    return  # fetched by another handshake while this one waited
                if now - self._missed_at < self.MISS_COOLDOWN:
                    return
            backoff = self.MISS_COOLDOWN if self._keys else self.FAILURE_BACKOFF
            if now - self._failed_at < backoff:
                self._unavailable_without_keys()
                return
            try:
                jwk_set = await asyncio.to_thread(self._client.get_jwk_set, True)
            except jwt.PyJWTError as exc:
                self._failed_at = time.monotonic()
                log.warning("cannot fetch the JWKS from %s: %s", self.url, exc)
                self._unavailable_without_keys()
                return
            self._keys = {
                k.key_id: k
                for k in jwk_set.keys
                if k.key_id and not k.algorithm_name.startswith("HS") and k.public_key_use != "enc"
            }
            self._fetched_at = time.monotonic()
            if kid not in self._keys:
                self._missed_at = self._fetched_at

    def _unavailable_without_keys(self) -> None:
        if not self._keys:
            raise ClientError("unavailable", "signing keys are unavailable, retry later")


class Subject(Protocol):
    """Whoever asks: a connection or a :class:`~pushgate.app.ClientInfo` (user and token claims).

    A connection also has ``channels`` (the channels it is subscribed to), which the
    ``presence = "subscribers"`` rule reads; a subject without it counts as subscribed to none.
    """

    @property
    def user(self) -> str | None: ...

    @property
    def claims(self) -> dict[str, Any] | None: ...


class Authorizer:
    """The one place that decides whether a client may do something; raises ``ClientError``.

    Rules, in the order they are checked (every operation names a channel except send):

    * **every channel operation** (subscribe, publish, presence, history): a namespace with
      ``subscribe = "authenticated"`` refuses anonymous connections, and the token's ``channels``
      claim (glob patterns; absent = any channel) must match the channel;
    * **subscribe**: then the application's ``on_subscribe`` hooks (which may raise
      :class:`~pushgate.errors.Reject`);
    * **publish**: first the namespace's ``publish`` switch (default: allowed in dev mode,
      refused with JWT; ``client_publish`` changes the default);
    * **presence**: a namespace with ``presence = "subscribers"`` answers only connections
      subscribed to the channel;
    * **send**: only a named user may send (the server stamps the sender; an anonymous
      connection has nothing to stamp); the token's ``send`` claim (user glob patterns; absent =
      anyone) must match every recipient; then the application's ``on_send`` hooks
      (:meth:`send_hooks`, async, run by the node after the data is validated).

    Every denial is ``permission_denied`` with a message that names the rule, never a 500.
    The synchronous checks do not await, so the node keeps a client's publishes in order.
    """

    def __init__(self, config: Config, app: App | None = None) -> None:
        self.config = config
        self.app = app

    def _channel_rules(self, who: Subject, channel: str) -> None:
        if who.user is None and self.config.namespace(channel).subscribe == "authenticated":
            raise ClientError("permission_denied", "this namespace needs an authenticated user")
        if not token_allows(who.claims, channel):
            raise ClientError("permission_denied", f"token does not allow {channel!r}")

    async def subscribe(self, who: ClientInfo, channel: str) -> None:
        self._channel_rules(who, channel)
        if self.app is not None:
            from .app import call_maybe_async

            for hook in self.app.subscribe_hooks:
                await call_maybe_async(hook, who, channel)

    def publish(self, who: Subject, channel: str) -> None:
        if not self.config.client_may_publish(channel):
            raise ClientError("permission_denied", f"clients may not publish to {channel!r}")
        self._channel_rules(who, channel)

    def presence(self, who: Subject, channel: str) -> None:
        self._channel_rules(who, channel)
        if self.config.namespace(channel).presence == "subscribers":
            channels = getattr(who, "channels", None)
            if channels is None or channel not in channels:
                raise ClientError("permission_denied", f"only subscribers of {channel!r} may ask its presence")

    def history(self, who: Subject, channel: str) -> None:
        self._channel_rules(who, channel)

    def send(self, who: Subject, users: Sequence[str]) -> None:
        if who.user is None:
            raise ClientError("permission_denied", "anonymous connections cannot send: no sender to stamp")
        patterns = (who.claims or {}).get("send")
        if isinstance(patterns, list):
            for user in users:
                if not any(isinstance(p, str) and fnmatch.fnmatchcase(user, p) for p in patterns):
                    raise ClientError("permission_denied", f"token does not allow sending to {user!r}")

    async def send_hooks(self, who: ClientInfo, users: Sequence[str], data: Any) -> None:
        """Run the application's ``on_send`` hooks (after :meth:`send`); a hook may ``Reject``."""
        if self.app is None:
            return
        from .app import call_maybe_async

        for hook in self.app.send_hooks:
            await call_maybe_async(hook, who, list(users), data)


def token_allows(claims: dict[str, Any] | None, channel: str) -> bool:
    """True unless the token's ``channels`` claim is a list none of whose patterns matches."""
    patterns = (claims or {}).get("channels")
    if not isinstance(patterns, list):
        return True
    return any(isinstance(p, str) and fnmatch.fnmatchcase(channel, p) for p in patterns)


# -- secrets: what start-up warns about and production refuses --------------------------------

#: Secrets copied from examples and tutorials (compared case-insensitively, also as substrings
#: of the secret for the longer ones): the first thing an attacker tries.
PLACEHOLDER_SECRETS = frozenset({
    "change-me", "changeme", "change_me", "change-this", "changethis", "replace-me", "replaceme",
    "secret", "secret-key", "secretkey", "mysecret", "my-secret", "supersecret", "topsecret",
    "jwt-secret", "jwt_secret", "jwtsecret", "your-256-bit-secret", "your-secret", "yoursecret",
    "password", "passw0rd", "admin", "default", "example", "test", "testing", "dev", "development",
    "letmein", "123456", "12345678", "api-key", "apikey", "todo", "xxx",
})
_PLACEHOLDER_PARTS = ("change-me", "changeme", "change_me", "replace-me", "your-256-bit-secret", "your-secret")
MIN_JWT_SECRET_BYTES = 32  # HS256: a key shorter than the hash output (RFC 7518 §3.2)
MIN_API_KEY_CHARS = 16


def _weakness(value: str, minimum: int, unit: str) -> str | None:
    lowered = value.strip().lower()
    if lowered in PLACEHOLDER_SECRETS or any(part in lowered for part in _PLACEHOLDER_PARTS):
        return "is a well-known placeholder"
    size = len(value.encode()) if unit == "bytes" else len(value)
    if size < minimum:
        return f"is {size} {unit} long (at least {minimum} needed)"
    if len(set(value)) <= 2:
        return "repeats one or two characters"
    return None


def secret_problems(config: Config) -> dict[str, str]:
    """Weak secrets in ``config``, as {setting: what is wrong}: ``production`` refuses these.

    A HS256 ``jwt_secret`` shorter than 32 bytes can be brute-forced offline from any one token
    a client holds; a placeholder is guessed first; an ``api_key`` shorter than 16 characters
    guards the whole HTTP API.
    """
    problems: dict[str, str] = {}
    if config.jwt_secret is not None:
        why = _weakness(config.jwt_secret, MIN_JWT_SECRET_BYTES, "bytes")
        if why:
            problems["jwt_secret"] = f"the HS256 secret {why}"
    if config.api_key is not None:
        why = _weakness(config.api_key, MIN_API_KEY_CHARS, "characters")
        if why:
            problems["api_key"] = f"the API key {why}"
    return problems


def _is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def production_problems(config: Config) -> dict[str, str]:
    """Everything ``production = true`` refuses, as {setting: why} (config validation raises
    :class:`ConfigError` on the first): dev mode, a keyless HTTP API, weak secrets, and a JWKS
    fetched over plain HTTP from another host (anyone on the path could swap the keys)."""
    problems: dict[str, str] = {}
    if not config.jwt_enabled:
        problems["production"] = (
            "dev mode (clients name themselves with ?user=) is refused: set jwt_secret, "
            "jwt_public_key or jwks_url"
        )
    if not config.api_key:
        problems["api_key"] = "an API key is required in production (the HTTP API must not be keyless)"
    problems.update(secret_problems(config))
    if config.jwks_url and config.jwks_url.startswith("http://") and not _is_loopback_url(config.jwks_url):
        problems["jwks_url"] = "must be https:// in production (keys over plain HTTP can be replaced)"
    return problems


def startup_warnings(config: Config) -> list[str]:
    """Loud warnings to log at start-up (server.py): weak secrets and risky production settings.

    Outside production a weak secret is allowed (tests, demos) but never silent; in production
    validation has already refused those, and what is left are choices worth a line in the log.
    """
    warnings = [f"WEAK SECRET: {why}; anyone who guesses it can {_CONSEQUENCE[key]}"
                for key, why in secret_problems(config).items()]
    if config.production and not config.allowed_origins:
        warnings.append("production without allowed_origins: web pages of any site may open connections "
                        "(tokens still guard them)")
    if config.production and config.jwt_enabled and not config.jwt_require_exp:
        warnings.append("production without jwt_require_exp: tokens without `exp` stay valid forever")
    return warnings


_CONSEQUENCE = {
    "jwt_secret": "sign tokens for any user",
    "api_key": "publish, send and disconnect through the HTTP API",
}


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
