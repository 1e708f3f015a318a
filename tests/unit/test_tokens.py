"""Access tokens: mint/verify, expiry on an injected clock, forgery and alg confusion, claim checks,
key rotation and the key files. Every failure must surface as `TokenError`.

Clocks are injected. Unless a test is about the clock itself, tokens are minted at `FUTURE` (2096), so
PyJWT's own wall-clock `exp` check can never be what decides a test.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from pingpull.errors import PingpullError, TokenError
from pingpull.tokens import (
    ALGORITHM,
    Claims,
    KeyRing,
    TokenSigner,
    TokenVerifier,
    create_key,
    ensure_keys,
    load_keys,
    new_kid,
)

FUTURE = 4_000_000_000  # 2096-10-02: far beyond the wall clock
TTL = 3600
LEEWAY = 30
MAX_ID = 2**63 - 1
KID = "20250101T000000Z-aaaaaa"
OLD_KID = "20240101T000000Z-bbbbbb"

KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()


def at(t: float) -> Callable[[], float]:
    return lambda: t


def signer(key: Ed25519PrivateKey = KEY, kid: str = KID, *, now: float = FUTURE, **kw: Any) -> TokenSigner:
    return TokenSigner(key, kid, ttl_s=kw.pop("ttl_s", TTL), clock=at(now), **kw)


def verifier(
    keys: dict[str, Ed25519PublicKey] | None = None, *, now: float = FUTURE, **kw: Any
) -> TokenVerifier:
    keys = {KID: KEY.public_key()} if keys is None else keys
    return TokenVerifier(keys, leeway_s=kw.pop("leeway_s", LEEWAY), clock=at(now), **kw)


DROP = object()  # passed to claims() to leave a claim out


def claims(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"sub": "7", "did": 9, "iat": FUTURE, "exp": FUTURE + TTL, "iss": "pingpull"}
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not DROP}


def forge(payload: dict[str, Any], key: Ed25519PrivateKey = KEY, kid: str = KID) -> str:
    """A correctly signed EdDSA token with an arbitrary payload."""
    return jwt.encode(payload, key, algorithm=ALGORITHM, headers={"kid": kid})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj: object) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def unb64json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def error_of(call: Callable[[], object]) -> Exception | None:
    """The exception `call` raises, or None; lets a test name a wrong exception type as a bug."""
    try:
        call()
    except Exception as exc:
        return exc
    return None


# --- mint and verify --------------------------------------------------------------------------------


def test_round_trip() -> None:
    token = signer().mint(7, 9)
    assert verifier().verify(token) == Claims(
        user_id=7, device_id=9, issued_at=FUTURE, expires_at=FUTURE + TTL
    )


def test_minted_token_layout() -> None:
    token = TokenSigner(KEY, KID, ttl_s=120, issuer="pp-test", clock=at(FUTURE + 0.9)).mint(42, 3)
    header_segment, payload_segment, _ = token.split(".")
    assert unb64json(header_segment) == {"alg": "EdDSA", "kid": KID, "typ": "JWT"}
    assert unb64json(payload_segment) == {
        "sub": "42",
        "did": 3,
        "iat": FUTURE,  # the clock is truncated to whole seconds
        "exp": FUTURE + 120,
        "iss": "pp-test",
    }


def test_signer_exposes_its_public_key_and_kid() -> None:
    s = signer()
    assert s.kid == KID
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert s.public_key.public_bytes(*raw) == KEY.public_key().public_bytes(*raw)


@settings(max_examples=50)
@given(st.integers(min_value=1, max_value=MAX_ID), st.integers(min_value=1, max_value=MAX_ID))
def test_round_trip_for_every_valid_id(user_id: int, device_id: int) -> None:
    result = verifier().verify(signer().mint(user_id, device_id))
    assert (result.user_id, result.device_id) == (user_id, device_id)


def test_custom_issuer_round_trip() -> None:
    token = signer(issuer="acme").mint(1, 2)
    assert verifier(issuer="acme").verify(token).user_id == 1


def test_claims_are_frozen() -> None:
    result = verifier().verify(signer().mint(1, 2))
    with pytest.raises(AttributeError):
        result.user_id = 5  # type: ignore[misc]


def test_verifier_needs_a_key() -> None:
    with pytest.raises(TokenError, match=r"^a verifier needs at least one public key$"):
        TokenVerifier({})


def test_verifier_key_ids() -> None:
    v = verifier({KID: KEY.public_key(), OLD_KID: OTHER_KEY.public_key()})
    assert v.key_ids == frozenset({KID, OLD_KID})


def test_token_error_is_a_pingpull_error() -> None:
    assert issubclass(TokenError, PingpullError)


# --- expiry on the injected clock -------------------------------------------------------------------


def test_expired_beyond_leeway_is_rejected() -> None:
    token = signer().mint(1, 2)
    with pytest.raises(TokenError, match=r"^token has expired$"):
        verifier(now=FUTURE + TTL + LEEWAY + 1).verify(token)


def test_expired_within_leeway_is_accepted() -> None:
    token = signer().mint(1, 2)
    assert verifier(now=FUTURE + TTL + 1).verify(token).user_id == 1
    assert verifier(now=FUTURE + TTL + LEEWAY).verify(token).user_id == 1  # the boundary itself


def test_zero_leeway() -> None:
    token = signer().mint(1, 2)
    assert verifier(now=FUTURE + TTL, leeway_s=0).verify(token).expires_at == FUTURE + TTL
    with pytest.raises(TokenError, match=r"^token has expired$"):
        verifier(now=FUTURE + TTL + 0.5, leeway_s=0).verify(token)


@given(st.integers(min_value=-TTL, max_value=2 * TTL), st.integers(min_value=0, max_value=600))
def test_expiry_boundary_follows_the_injected_clock(offset: int, leeway: int) -> None:
    token = signer().mint(1, 2)
    check = verifier(now=FUTURE + offset, leeway_s=leeway)
    if offset <= TTL + leeway:
        assert check.verify(token).user_id == 1
    else:
        with pytest.raises(TokenError, match=r"^token has expired$"):
            check.verify(token)


def test_wall_clock_expired_token_is_rejected() -> None:
    # Minted in 2020 and checked by a verifier on the real clock: long expired.
    token = signer(now=1_600_000_000).mint(1, 2)
    with pytest.raises(TokenError, match=r"^token has expired$"):
        TokenVerifier({KID: KEY.public_key()}).verify(token)


def test_injected_clock_alone_decides_expiry() -> None:
    # The clock is injectable "for tests and skewed hosts", but PyJWT's decode still checks `exp`
    # against the real wall clock (verify_exp is left on), so a token that is valid on the injected
    # clock is rejected whenever that clock is behind the wall clock.
    past = 1_600_000_000
    token = signer(now=past).mint(1, 2)
    result = error_of(lambda: verifier(now=past + 10).verify(token))
    assert result is None, (
        f"BUG: a token 10 s old on the injected clock (ttl {TTL} s) was rejected with {result!r}: "
        "the wall clock, not the injected one, decided expiry"
    )


# --- forgery and alg confusion ----------------------------------------------------------------------


def test_forged_signature_with_the_same_kid_is_rejected() -> None:
    token = signer(OTHER_KEY, KID).mint(1, 2)
    with pytest.raises(TokenError, match=r"^invalid token: Signature verification failed$"):
        verifier().verify(token)


def test_unknown_kid_is_rejected() -> None:
    token = signer(KEY, "somebody-else").mint(1, 2)
    with pytest.raises(TokenError, match=r"^token is signed by an unknown key$"):
        verifier().verify(token)


def test_missing_kid_is_rejected() -> None:
    token = jwt.encode(claims(), KEY, algorithm=ALGORITHM)
    with pytest.raises(TokenError, match=r"^token is signed by an unknown key$"):
        verifier().verify(token)


def test_non_string_kid_is_rejected() -> None:
    token = ".".join([b64json({"alg": "EdDSA", "kid": 5}), b64json(claims()), b64(b"x" * 64)])
    with pytest.raises(TokenError):
        verifier({"5": KEY.public_key()}).verify(token)


def test_hs256_token_keyed_with_the_public_key_is_rejected() -> None:
    secret = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    token = jwt.encode(claims(), secret, algorithm="HS256", headers={"kid": KID})
    with pytest.raises(TokenError, match=r"^token is not signed with EdDSA$"):
        verifier().verify(token)


def test_eddsa_header_over_an_hmac_signature_is_rejected() -> None:
    secret = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    hs = jwt.encode(claims(), secret, algorithm="HS256", headers={"kid": KID})
    _, payload, signature = hs.split(".")
    token = f"{b64json({'alg': 'EdDSA', 'kid': KID, 'typ': 'JWT'})}.{payload}.{signature}"
    with pytest.raises(TokenError, match=r"^invalid token: "):
        verifier().verify(token)


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_rejected(alg: str) -> None:
    token = f"{b64json({'alg': alg, 'kid': KID, 'typ': 'JWT'})}.{b64json(claims())}."
    with pytest.raises(TokenError, match=r"^token is not signed with EdDSA$"):
        verifier().verify(token)


def test_pyjwt_alg_none_token_is_rejected() -> None:
    token = jwt.encode(claims(), "", algorithm="none", headers={"kid": KID})
    with pytest.raises(TokenError, match=r"^token is not signed with EdDSA$"):
        verifier().verify(token)


def test_missing_alg_is_rejected() -> None:
    token = f"{b64json({'kid': KID})}.{b64json(claims())}.{b64(b'x' * 64)}"
    with pytest.raises(TokenError, match=r"^token is not signed with EdDSA$"):
        verifier().verify(token)


def test_tampered_payload_is_rejected() -> None:
    token = signer().mint(7, 9)
    header, payload, signature = token.split(".")
    body = unb64json(payload)
    body["sub"] = "1"  # become user 1
    tampered = f"{header}.{b64json(body)}.{signature}"
    with pytest.raises(TokenError, match=r"^invalid token: Signature verification failed$"):
        verifier().verify(tampered)


def test_tampered_header_kid_is_rejected() -> None:
    # Re-pointing the kid at another trusted key breaks the signature, which covers the header too.
    token = signer().mint(7, 9)
    _, payload, signature = token.split(".")
    tampered = f"{b64json({'alg': 'EdDSA', 'kid': OLD_KID, 'typ': 'JWT'})}.{payload}.{signature}"
    keys = {KID: KEY.public_key(), OLD_KID: OTHER_KEY.public_key()}
    with pytest.raises(TokenError, match=r"^invalid token: Signature verification failed$"):
        verifier(keys).verify(tampered)


def test_truncated_signature_is_rejected() -> None:
    token = signer().mint(7, 9)
    with pytest.raises(TokenError, match=r"^(malformed token|invalid token: .+)$"):
        verifier().verify(token[:-4])


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c", "....", "ey.ey.ey", "é.é.é"])
def test_malformed_tokens_are_rejected(token: str) -> None:
    with pytest.raises(TokenError, match=r"^malformed token$"):
        verifier().verify(token)


def test_non_object_header_is_rejected() -> None:
    token = f"{b64json([1, 2])}.{b64json(claims())}.{b64(b'x' * 64)}"
    with pytest.raises(TokenError, match=r"^malformed token$"):
        verifier().verify(token)


@given(st.text(max_size=300))
def test_arbitrary_text_only_ever_raises_token_error(token: str) -> None:
    with pytest.raises(TokenError):
        verifier().verify(token)


@settings(max_examples=200)
@given(st.binary(min_size=1, max_size=8), st.integers(min_value=0))
def test_corrupted_valid_token_only_ever_raises_token_error(junk: bytes, where: int) -> None:
    token = signer().mint(7, 9)
    i = where % len(token)
    corrupted = token[:i] + b64(junk) + token[i + 1 :]
    try:
        result = verifier().verify(corrupted)
    except TokenError:
        return
    # base64url has slack in its last character, so a rare corruption decodes to the same bytes.
    assert result == Claims(user_id=7, device_id=9, issued_at=FUTURE, expires_at=FUTURE + TTL)


# --- claims -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["exp", "iat", "sub", "did", "iss"])
def test_missing_claim_is_rejected(missing: str) -> None:
    token = forge(claims(**{missing: DROP}))
    with pytest.raises(TokenError) as excinfo:
        verifier().verify(token)
    assert str(excinfo.value) == f'invalid token: Token is missing the "{missing}" claim'


def test_wrong_issuer_is_rejected() -> None:
    token = signer(issuer="evil").mint(1, 2)
    with pytest.raises(TokenError, match=r"^invalid token: Invalid issuer$"):
        verifier().verify(token)


@pytest.mark.parametrize(("exp", "iat"), [(FUTURE + 10.5, FUTURE), (FUTURE + TTL, float(FUTURE))])
def test_non_integer_times_are_rejected(exp: float, iat: float) -> None:
    token = forge(claims(exp=exp, iat=iat))
    with pytest.raises(TokenError, match=r"^invalid token: exp and iat must be integers$"):
        verifier().verify(token)


@pytest.mark.parametrize("did", [0, -1, -(2**63), True, False, "abc", "", "-1", 2**63, 1.5, 1.0, [1], {}])
def test_did_that_is_not_a_positive_id_is_rejected(did: object) -> None:
    with pytest.raises(TokenError, match=r"^invalid token: did is not an id$"):
        verifier().verify(forge(claims(did=did)))


@pytest.mark.parametrize("sub", ["0", "-1", "abc", "", " 1", "1 ", "+1", "1.0", "1e3", "0x1", str(2**63)])
def test_sub_that_is_not_a_positive_id_is_rejected(sub: str) -> None:
    with pytest.raises(TokenError, match=r"^invalid token: sub is not an id$"):
        verifier().verify(forge(claims(sub=sub)))


@pytest.mark.parametrize("sub", [7, True, 0, -1, None])
def test_non_string_sub_is_rejected(sub: object) -> None:
    # RFC 7519 makes `sub` a StringOrURI; PyJWT enforces that before our id check runs.
    with pytest.raises(TokenError, match=r"^invalid token: "):
        verifier().verify(forge(claims(sub=sub)))


@pytest.mark.parametrize(
    "sub",
    [
        pytest.param("²", id="superscript-two"),
        pytest.param("١٢", id="arabic-indic-digits"),
        pytest.param("9" * 5000, id="5000-digits"),
    ],
)
def test_sub_with_non_ascii_or_huge_digit_strings_is_rejected(sub: str) -> None:
    # `_parse_id` trusts str.isdigit(), which is true for any Unicode digit: int() then either raises a
    # raw ValueError ("²", or past the 4300-digit conversion limit) or accepts a non-canonical id.
    token = forge(claims(sub=sub))
    result = error_of(lambda: verifier().verify(token))
    assert isinstance(result, TokenError), (
        f"BUG: sub={sub[:12]!r} gave {type(result).__name__}({str(result)[:60]!r}) instead of TokenError"
        if result is not None
        else f"BUG: sub={sub!r} was accepted as user {verifier().verify(token).user_id}"
    )
    assert str(result) == "invalid token: sub is not an id"


def test_largest_ids_are_accepted() -> None:
    result = verifier().verify(forge(claims(sub=str(MAX_ID), did=MAX_ID)))
    assert (result.user_id, result.device_id) == (MAX_ID, MAX_ID)


def test_mint_of_an_invalid_id_does_not_verify() -> None:
    with pytest.raises(TokenError, match=r"^invalid token: sub is not an id$"):
        verifier().verify(signer().mint(0, 1))
    with pytest.raises(TokenError, match=r"^invalid token: did is not an id$"):
        verifier().verify(signer().mint(1, -5))


# --- key rotation -----------------------------------------------------------------------------------


def two_key_ring() -> KeyRing:
    return KeyRing(
        private_keys={OLD_KID: OTHER_KEY, KID: KEY},
        public_keys={OLD_KID: OTHER_KEY.public_key(), KID: KEY.public_key()},
    )


def test_ring_signer_defaults_to_the_newest_kid() -> None:
    ring = two_key_ring()
    s = ring.signer(ttl_s=TTL, issuer="pingpull", clock=at(FUTURE))
    assert s.kid == KID
    assert jwt.get_unverified_header(s.mint(1, 2))["kid"] == KID


def test_ring_signer_by_name() -> None:
    s = two_key_ring().signer(OLD_KID, ttl_s=TTL, issuer="pingpull", clock=at(FUTURE))
    assert s.kid == OLD_KID
    assert jwt.get_unverified_header(s.mint(1, 2))["kid"] == OLD_KID


def test_ring_signer_unknown_kid() -> None:
    with pytest.raises(TokenError, match=r"^signing key 'nope' not found$"):
        two_key_ring().signer("nope", ttl_s=TTL, issuer="pingpull")


def test_ring_signer_without_private_keys() -> None:
    ring = KeyRing(private_keys={}, public_keys={KID: KEY.public_key()})
    with pytest.raises(TokenError, match=r"^no private key to sign tokens with$"):
        ring.signer(ttl_s=TTL, issuer="pingpull")


def test_tokens_from_the_old_key_still_verify_after_rotation() -> None:
    ring = two_key_ring()
    old_token = ring.signer(OLD_KID, ttl_s=TTL, issuer="pingpull", clock=at(FUTURE)).mint(3, 4)
    new_token = ring.signer(ttl_s=TTL, issuer="pingpull", clock=at(FUTURE)).mint(5, 6)
    v = ring.verifier(issuer="pingpull", leeway_s=LEEWAY, clock=at(FUTURE))
    assert v.key_ids == frozenset({OLD_KID, KID})
    assert v.verify(old_token).user_id == 3
    assert v.verify(new_token).user_id == 5
    # A verifier that has not learned the new key yet rejects the new token, not the old one.
    stale = TokenVerifier({OLD_KID: OTHER_KEY.public_key()}, clock=at(FUTURE))
    assert stale.verify(old_token).user_id == 3
    with pytest.raises(TokenError, match=r"^token is signed by an unknown key$"):
        stale.verify(new_token)


def test_ring_verifier_passes_issuer_and_leeway() -> None:
    ring = two_key_ring()
    token = ring.signer(ttl_s=TTL, issuer="acme", clock=at(FUTURE)).mint(1, 2)
    with pytest.raises(TokenError, match=r"^invalid token: Invalid issuer$"):
        ring.verifier(issuer="pingpull", leeway_s=0, clock=at(FUTURE)).verify(token)
    assert ring.verifier(issuer="acme", leeway_s=5, clock=at(FUTURE + TTL + 5)).verify(token).user_id == 1
    with pytest.raises(TokenError, match=r"^token has expired$"):
        ring.verifier(issuer="acme", leeway_s=5, clock=at(FUTURE + TTL + 6)).verify(token)


# --- key files --------------------------------------------------------------------------------------

KID_PATTERN = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_new_kid_starts_with_the_utc_time() -> None:
    kid = new_kid(at(1_700_000_000))
    assert kid.startswith("20231114T221320Z-")
    assert KID_PATTERN.fullmatch(kid)
    assert new_kid(at(0)).startswith("19700101T000000Z-")


def test_create_key_writes_a_private_and_a_public_pem(tmp_path: Path) -> None:
    keys_dir = tmp_path / "a" / "keys"
    kid = create_key(keys_dir, at(1_700_000_000))
    assert kid.startswith("20231114T221320Z-")
    assert sorted(p.name for p in keys_dir.iterdir()) == [f"{kid}.pem", f"{kid}.pub.pem"]
    private_path = keys_dir / f"{kid}.pem"
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys_dir.stat().st_mode) & 0o077 == 0
    private = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
    public = serialization.load_pem_public_key((keys_dir / f"{kid}.pub.pem").read_bytes())
    assert isinstance(private, Ed25519PrivateKey)
    assert isinstance(public, Ed25519PublicKey)
    assert raw_public(private.public_key()) == raw_public(public)


def test_create_key_twice_gives_distinct_kids(tmp_path: Path) -> None:
    first = create_key(tmp_path, at(0))
    second = create_key(tmp_path, at(0))
    assert first != second
    assert len(list(tmp_path.iterdir())) == 4


def test_load_keys_round_trip(tmp_path: Path) -> None:
    kid = create_key(tmp_path)
    ring = load_keys(tmp_path)
    assert set(ring.private_keys) == {kid}
    assert set(ring.public_keys) == {kid}
    token = ring.signer(ttl_s=TTL, issuer="pingpull", clock=at(FUTURE)).mint(1, 2)
    assert ring.verifier(issuer="pingpull", leeway_s=0, clock=at(FUTURE)).verify(token).device_id == 2


def test_load_keys_rotation_from_files(tmp_path: Path) -> None:
    old = create_key(tmp_path, at(1_700_000_000))
    new = create_key(tmp_path, at(1_800_000_000))
    ring = load_keys(tmp_path)
    assert set(ring.private_keys) == {old, new}
    assert ring.signer(ttl_s=TTL, issuer="pingpull").kid == new
    assert ring.signer(old, ttl_s=TTL, issuer="pingpull").kid == old


def test_load_keys_ignores_other_files(tmp_path: Path) -> None:
    kid = create_key(tmp_path)
    (tmp_path / "README.txt").write_text("not a key")
    (tmp_path / "notes.pem.bak").write_text("not a key either")
    ring = load_keys(tmp_path)
    assert set(ring.public_keys) == {kid}


def test_gateway_dir_with_only_public_keys(tmp_path: Path) -> None:
    content_dir, gateway_dir = tmp_path / "content", tmp_path / "gateway"
    kid = create_key(content_dir)
    gateway_dir.mkdir()
    (gateway_dir / f"{kid}.pub.pem").write_bytes((content_dir / f"{kid}.pub.pem").read_bytes())
    gateway = load_keys(gateway_dir)
    assert dict(gateway.private_keys) == {}
    assert set(gateway.public_keys) == {kid}
    with pytest.raises(TokenError, match=r"^no private key to sign tokens with$"):
        gateway.signer(ttl_s=TTL, issuer="pingpull")
    token = load_keys(content_dir).signer(ttl_s=TTL, issuer="pingpull", clock=at(FUTURE)).mint(8, 9)
    assert gateway.verifier(issuer="pingpull", leeway_s=0, clock=at(FUTURE)).verify(token).user_id == 8


def test_public_key_file_wins_over_the_derived_one(tmp_path: Path) -> None:
    kid = create_key(tmp_path)
    derived = raw_public(load_keys(tmp_path).public_keys[kid])
    from_file = serialization.load_pem_public_key((tmp_path / f"{kid}.pub.pem").read_bytes())
    assert isinstance(from_file, Ed25519PublicKey)
    assert derived == raw_public(from_file)


def test_ensure_keys_creates_a_key_in_a_missing_dir(tmp_path: Path) -> None:
    keys_dir = tmp_path / "data" / "keys"
    ring = ensure_keys(keys_dir, at(1_700_000_000))
    assert len(ring.private_keys) == 1
    (kid,) = ring.private_keys
    assert kid.startswith("20231114T221320Z-")
    assert set(ring.public_keys) == {kid}


def test_ensure_keys_creates_a_key_in_an_empty_dir(tmp_path: Path) -> None:
    ring = ensure_keys(tmp_path)
    assert len(ring.private_keys) == 1
    assert len(list(tmp_path.iterdir())) == 2


def test_ensure_keys_is_idempotent(tmp_path: Path) -> None:
    first = ensure_keys(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    second = ensure_keys(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    assert set(second.private_keys) == set(first.private_keys)


def test_ensure_keys_keeps_an_existing_private_key(tmp_path: Path) -> None:
    kid = create_key(tmp_path)
    ring = ensure_keys(tmp_path)
    assert set(ring.private_keys) == {kid}
    assert len(list(tmp_path.iterdir())) == 2


def test_ensure_keys_adds_a_private_key_next_to_public_only_keys(tmp_path: Path) -> None:
    source = tmp_path / "source"
    keys_dir = tmp_path / "keys"
    public_kid = create_key(source)
    keys_dir.mkdir()
    (keys_dir / f"{public_kid}.pub.pem").write_bytes((source / f"{public_kid}.pub.pem").read_bytes())
    ring = ensure_keys(keys_dir)
    assert len(ring.private_keys) == 1
    assert public_kid not in ring.private_keys
    assert set(ring.public_keys) == {public_kid, *ring.private_keys}


def test_load_keys_missing_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(TokenError) as excinfo:
        load_keys(missing)
    assert str(excinfo.value) == f"keys directory {missing} does not exist"


def test_load_keys_on_a_file_instead_of_a_dir(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("")
    with pytest.raises(TokenError, match=r"does not exist$"):
        load_keys(path)


def test_load_keys_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(TokenError) as excinfo:
        load_keys(tmp_path)
    assert str(excinfo.value) == f"no keys found in {tmp_path}"


def test_load_keys_dir_without_key_files(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("keys go here")
    with pytest.raises(TokenError) as excinfo:
        load_keys(tmp_path)
    assert str(excinfo.value) == f"no keys found in {tmp_path}"


def pem_private(key: Any) -> bytes:
    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def pem_public(key: Any) -> bytes:
    return key.public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=1024)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("rsa.pem", pem_private(RSA_KEY), "is not an Ed25519 private key"),
        ("ec.pem", pem_private(EC_KEY), "is not an Ed25519 private key"),
        ("rsa.pub.pem", pem_public(RSA_KEY.public_key()), "is not an Ed25519 public key"),
        ("ec.pub.pem", pem_public(EC_KEY.public_key()), "is not an Ed25519 public key"),
    ],
)
def test_load_keys_rejects_other_key_types(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    create_key(tmp_path)  # a good key next to the bad one does not save it
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(TokenError) as excinfo:
        load_keys(tmp_path)
    assert str(excinfo.value) == f"{path} {message}"


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("garbage.pem", b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n"),
        ("empty.pem", b""),
        ("garbage.pub.pem", b"hello"),
        ("swapped.pem", pem_public(KEY.public_key())),  # a public key where a private key belongs
    ],
)
def test_load_keys_rejects_unparsable_files(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(TokenError) as excinfo:
        load_keys(tmp_path)
    assert str(excinfo.value).startswith(f"cannot load key {path}: ")


def test_load_keys_rejects_a_directory_named_like_a_key(tmp_path: Path) -> None:
    (tmp_path / "dir.pem").mkdir()
    with pytest.raises(TokenError, match=r"^cannot load key "):
        load_keys(tmp_path)


def test_load_keys_rejects_an_encrypted_private_key_with_token_error(tmp_path: Path) -> None:
    # cryptography raises TypeError ("Password was not given but private key is encrypted") for an
    # encrypted PEM; load_keys only translates OSError and ValueError, so TypeError escapes.
    pem = KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    path = tmp_path / "encrypted.pem"
    path.write_bytes(pem)
    result = error_of(lambda: load_keys(tmp_path))
    assert isinstance(result, TokenError), (
        f"BUG: an encrypted private key raised {type(result).__name__}({result}) instead of TokenError"
    )
    assert str(result).startswith(f"cannot load key {path}: ")


def test_private_key_file_is_not_group_or_world_readable_even_with_a_lax_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        kid = create_key(tmp_path / "keys")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "keys" / f"{kid}.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
