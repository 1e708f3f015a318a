"""Device access tokens: EdDSA (Ed25519) JWTs with key ids, so keys can rotate.

Only the content service holds a private key and mints; gateways and the push bridge hold public keys
and verify, so a compromised gateway cannot forge identities. Every token names its key in the `kid`
header: a rotation adds a new key, signs with it, and keeps the old public key until the last token it
signed has expired. Claims: `sub` user id, `did` device id, `iat`, `exp`, `iss`.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pingpull.errors import TokenError

ALGORITHM = "EdDSA"
PRIVATE_SUFFIX = ".pem"
PUBLIC_SUFFIX = ".pub.pem"
# Claims are ids as JSON integers; anything bigger is not ours.
_MAX_ID = 2**63 - 1
_ASCII_ID = re.compile(r"[0-9]{1,19}")

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Claims:
    user_id: int
    device_id: int
    issued_at: int
    expires_at: int


class TokenVerifier:
    """Verifies tokens against a fixed set of public keys, chosen by the token's `kid` header."""

    def __init__(
        self,
        public_keys: Mapping[str, Ed25519PublicKey],
        *,
        issuer: str = "pingpull",
        leeway_s: int = 30,
        clock: Clock = time.time,
    ) -> None:
        if not public_keys:
            raise TokenError("a verifier needs at least one public key")
        self._keys = dict(public_keys)
        self._issuer = issuer
        self._leeway_s = leeway_s
        self._clock = clock

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def verify(self, token: str) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError("malformed token") from exc
        kid = header.get("kid")
        if header.get("alg") != ALGORITHM:
            raise TokenError("token is not signed with EdDSA")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise TokenError("token is signed by an unknown key")
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=self._issuer,
                leeway=self._leeway_s,
                # Expiry is checked below against our clock, which may be injected (tests, skewed hosts).
                options={
                    "require": ["exp", "iat", "sub", "did", "iss"],
                    "verify_iat": False,
                    "verify_exp": False,
                },
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("token has expired") from exc
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token: {exc}") from exc
        exp, iat = payload["exp"], payload["iat"]
        if not isinstance(exp, int) or not isinstance(iat, int):
            raise TokenError("invalid token: exp and iat must be integers")
        claims = Claims(
            user_id=_parse_id(payload["sub"], "sub", allow_text=True),
            device_id=_parse_id(payload["did"], "did", allow_text=False),
            issued_at=iat,
            expires_at=exp,
        )
        self.check_expiry(claims)
        return claims

    def check_expiry(self, claims: Claims) -> None:
        """Raise TokenError if the claims have expired by now (for callers that cache verified claims)."""
        if claims.expires_at + self._leeway_s < self._clock():
            raise TokenError("token has expired")


class TokenSigner:
    """Mints tokens with one private key; the content service is the only holder."""

    def __init__(
        self,
        private_key: Ed25519PrivateKey,
        kid: str,
        *,
        ttl_s: int,
        issuer: str = "pingpull",
        clock: Clock = time.time,
    ) -> None:
        self._key = private_key
        self.kid = kid
        self._ttl_s = ttl_s
        self._issuer = issuer
        self._clock = clock

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def mint(self, user_id: int, device_id: int) -> str:
        now = int(self._clock())
        payload = {
            # RFC 7519 makes `sub` a string; ids are integers everywhere else, so convert at this edge.
            "sub": str(user_id),
            "did": device_id,
            "iat": now,
            "exp": now + self._ttl_s,
            "iss": self._issuer,
        }
        return jwt.encode(payload, self._key, algorithm=ALGORITHM, headers={"kid": self.kid})


def _parse_id(value: object, claim: str, *, allow_text: bool) -> int:
    if isinstance(value, bool):
        raise TokenError(f"invalid token: {claim} is not an id")
    # `str.isdigit` would accept "²" and Arabic-Indic digits; ids are 1..19 ASCII digits.
    if allow_text and isinstance(value, str) and _ASCII_ID.fullmatch(value):
        value = int(value)
    if not isinstance(value, int) or not 1 <= value <= _MAX_ID:
        raise TokenError(f"invalid token: {claim} is not an id")
    return value


# --- key files -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The keys found in a keys directory: private keys by kid (may be empty) and public keys by kid."""

    private_keys: Mapping[str, Ed25519PrivateKey]
    public_keys: Mapping[str, Ed25519PublicKey]

    def signer(self, kid: str = "", *, ttl_s: int, issuer: str, clock: Clock = time.time) -> TokenSigner:
        if not self.private_keys:
            raise TokenError("no private key to sign tokens with")
        chosen = kid or max(self.private_keys)  # kids start with a UTC timestamp: max is newest
        if chosen not in self.private_keys:
            raise TokenError(f"signing key {chosen!r} not found")
        return TokenSigner(self.private_keys[chosen], chosen, ttl_s=ttl_s, issuer=issuer, clock=clock)

    def verifier(self, *, issuer: str, leeway_s: int, clock: Clock = time.time) -> TokenVerifier:
        return TokenVerifier(self.public_keys, issuer=issuer, leeway_s=leeway_s, clock=clock)


def new_kid(clock: Clock = time.time) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(clock())) + "-" + secrets.token_hex(3)


def create_key(keys_dir: Path, clock: Clock = time.time) -> str:
    """Write a new Ed25519 key pair as `<kid>.pem` (mode 0600) and `<kid>.pub.pem`; return the kid."""
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    kid = new_kid(clock)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path = keys_dir / f"{kid}{PRIVATE_SUFFIX}"
    with open(private_path, "xb", opener=_open_private) as fh:
        fh.write(private_pem)
    (keys_dir / f"{kid}{PUBLIC_SUFFIX}").write_bytes(public_pem)
    return kid


def _open_private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def load_keys(keys_dir: Path) -> KeyRing:
    """Read every key in `keys_dir`. A private key implies its public key."""
    private: dict[str, Ed25519PrivateKey] = {}
    public: dict[str, Ed25519PublicKey] = {}
    if not keys_dir.is_dir():
        raise TokenError(f"keys directory {keys_dir} does not exist")
    for path in sorted(keys_dir.iterdir()):
        name = path.name
        try:
            if name.endswith(PUBLIC_SUFFIX):
                loaded = serialization.load_pem_public_key(path.read_bytes())
                if not isinstance(loaded, Ed25519PublicKey):
                    raise TokenError(f"{path} is not an Ed25519 public key")
                public[name.removesuffix(PUBLIC_SUFFIX)] = loaded
            elif name.endswith(PRIVATE_SUFFIX):  # checked after PUBLIC_SUFFIX, which it also matches
                secret = serialization.load_pem_private_key(path.read_bytes(), password=None)
                if not isinstance(secret, Ed25519PrivateKey):
                    raise TokenError(f"{path} is not an Ed25519 private key")
                private[name.removesuffix(PRIVATE_SUFFIX)] = secret
        except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
            # TypeError: an encrypted private key (we take none); UnsupportedAlgorithm: exotic PEM.
            raise TokenError(f"cannot load key {path}: {exc}") from exc
    for kid, secret in private.items():
        derived = secret.public_key()
        stored = public.setdefault(kid, derived)
        if stored.public_bytes_raw() != derived.public_bytes_raw():
            # Tokens signed with the private key would not verify against the published public key.
            raise TokenError(f"{kid}{PUBLIC_SUFFIX} does not match {kid}{PRIVATE_SUFFIX}")
    if not public:
        raise TokenError(f"no keys found in {keys_dir}")
    return KeyRing(private_keys=private, public_keys=public)


def ensure_keys(keys_dir: Path, clock: Clock = time.time) -> KeyRing:
    """Load the keys, creating a first key pair when the directory holds none (embedded mode)."""
    has_private = keys_dir.is_dir() and any(
        p.name.endswith(PRIVATE_SUFFIX) and not p.name.endswith(PUBLIC_SUFFIX) for p in keys_dir.iterdir()
    )
    if not has_private:
        create_key(keys_dir, clock)
    return load_keys(keys_dir)
