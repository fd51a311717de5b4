"""Who is connecting: JWT verification (or dev-mode ``?user=``), origin checks, channel permissions.

The JWT algorithm is pinned to the configured key type (HS256 for a secret; RS256/ES256 for a
public key), so a token can never choose its own algorithm and ``alg: none`` is always refused.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from .config import Config
from .errors import AuthError, ConfigError
from .names import CHANNEL_RE

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
