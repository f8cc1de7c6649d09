"""Gateway pieces without a server: token checks, permissions, NATS JWTs, xkeys, key files."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from actors.settings import Settings
from contracts.subjects import user_token
from gateway import natsjwt, permissions
from gateway.callout import AuthCallout
from gateway.devtoken import mint, mint_for
from gateway.keys import CalloutKeys, load_keys, server_env
from gateway.nkeycodec import ACCOUNT, SERVER, USER, NkeyError, decode_public, encode_public
from gateway.tokens import TokenError, TokenVerifier
from gateway.xkeys import XKey, XKeyError

ROOT = Path(__file__).resolve().parent.parent

SECRET = "test-secret-long-enough-for-hs256-and-for-hs512-too-0123456789abcdef"


def pem(private_key) -> str:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def claims(**extra):
    return {"sub": "alice", "exp": int(time.time()) + 60, **extra}


# tokens

def test_a_valid_hs256_token_gives_its_sub_and_exp():
    token = mint(SECRET, "alice", 60)
    got = TokenVerifier(secret=SECRET).verify(token)
    assert got.sub == "alice" and got.uid == "alice"
    assert time.time() + 55 < got.exp <= time.time() + 61


@pytest.mark.parametrize("token", [
    None, "", "garbage", "a.b.c",
    jwt.encode(claims(), "another-secret-another-secret-another!", algorithm="HS256"),
    jwt.encode(claims(exp=int(time.time()) - 5), SECRET, algorithm="HS256"),
    jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"),  # no exp
    jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256"),  # no sub
    jwt.encode(claims(sub=""), SECRET, algorithm="HS256"),
    jwt.encode(claims(), None, algorithm="none"),
    jwt.encode(claims(), SECRET, algorithm="HS512"),
], ids=["none", "empty", "garbage", "dots", "bad-signature", "expired", "no-exp", "no-sub",
        "empty-sub", "alg-none", "hs512"])
def test_bad_tokens_are_refused(token):
    with pytest.raises(TokenError):
        TokenVerifier(secret=SECRET).verify(token)


def test_token_error_never_carries_the_token():
    token = jwt.encode(claims(exp=int(time.time()) - 5), SECRET, algorithm="HS256")
    with pytest.raises(TokenError) as info:
        TokenVerifier(secret=SECRET).verify(token)
    assert token not in str(info.value) and str(info.value) == "token expired"


def test_issuer_and_audience_are_checked_only_when_configured():
    strict = TokenVerifier(secret=SECRET, issuer="app", audience="docchat")
    assert strict.verify(mint(SECRET, "alice", 60, issuer="app", audience="docchat")).sub == "alice"
    for token in (mint(SECRET, "alice", 60), mint(SECRET, "alice", 60, issuer="evil", audience="docchat"),
                  mint(SECRET, "alice", 60, issuer="app", audience="other")):
        with pytest.raises(TokenError):
            strict.verify(token)
    # Unconfigured: a token's own iss/aud is no reason to refuse it.
    assert TokenVerifier(secret=SECRET).verify(mint(SECRET, "alice", 60, issuer="x", audience="y")).sub == "alice"


@pytest.mark.parametrize("make,alg", [
    (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
    (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256"),
])
def test_public_key_tokens_verify_and_the_key_decides_the_algorithm(make, alg):
    key = make()
    verifier = TokenVerifier(public_key=pem(key))
    assert verifier.verify(jwt.encode(claims(), key, algorithm=alg)).sub == "alice"
    with pytest.raises(TokenError):  # signed by someone else
        verifier.verify(jwt.encode(claims(), make(), algorithm=alg))
    with pytest.raises(TokenError):  # HS256 with the public key as secret: the classic confusion
        verifier.verify(hs256_by_hand(pem(key)))


def hs256_by_hand(secret: str) -> str:
    """An HS256 token keyed with secret; pyjwt refuses to HMAC with a PEM, so build it here."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")
    signing = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims()).encode())
    return signing + "." + b64(hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest())


def test_a_verifier_needs_a_key():
    with pytest.raises(ValueError):
        TokenVerifier()


def test_a_sub_that_is_not_subject_safe_maps_to_the_hashed_uid():
    got = TokenVerifier(secret=SECRET).verify(mint(SECRET, "alice@example.com", 60))
    assert got.sub == "alice@example.com" and got.uid == user_token("alice@example.com")
    assert got.uid.startswith("h") and len(got.uid) == 41


def test_mint_for_settings_is_accepted_by_the_settings_verifier():
    settings = Settings(jwt_secret=SECRET, jwt_issuer="app", jwt_audience="docchat")
    assert TokenVerifier.from_settings(settings).verify(mint_for(settings, "bob", 5)).sub == "bob"


# permissions

def test_permissions_are_exactly_the_users_requests_events_and_inbox():
    p = permissions.for_user("alice")
    assert set(p.publish) == {
        "chat.u.alice.sessions.getOrCreate", "chat.u.alice.sessions.byDocument",
        "chat.u.alice.sessions.*.send", "chat.u.alice.sessions.*.messages",
        "chat.u.alice.sessions.*.cancel", "chat.u.alice.sessions.*.retry",
        # as the server's partition mapping rewrites them (permissions are checked after it)
        "chat.u.alice.p.*.sessions.getOrCreate", "chat.u.alice.p.*.sessions.byDocument",
        "chat.u.alice.p.*.sessions.*.send", "chat.u.alice.p.*.sessions.*.messages",
        "chat.u.alice.p.*.sessions.*.cancel", "chat.u.alice.p.*.sessions.*.retry",
    }
    assert set(p.subscribe) == {"chat.u.alice.sessions.*.events", "_INBOX_alice.>"}
    assert p.to_claims() == {"pub": {"allow": list(p.publish)}, "sub": {"allow": list(p.subscribe)}}
    assert "resp" not in p.to_claims()  # no allow_responses


@pytest.mark.parametrize("uid", ["", "a.b", "a*", ">", "a b", "x" * 65])
def test_permissions_refuse_a_uid_that_is_not_a_subject_token(uid):
    with pytest.raises(ValueError):
        permissions.for_user(uid)


# NATS JWTs, nkeys, xkeys

def test_nats_jwt_round_trips_and_a_tampered_one_is_refused():
    signer = natsjwt.NkeySigner.create(SERVER)
    token = natsjwt.encode({"sub": "x", "nats": {"type": "t", "version": 2}}, signer)
    header, body, sig = token.split(".")
    got = natsjwt.decode(token, SERVER)
    assert got["iss"] == signer.public_key and got["sub"] == "x" and got["jti"] and got["iat"]
    with pytest.raises(natsjwt.NatsJwtError):  # signed by a server key, expected an account key
        natsjwt.decode(token, ACCOUNT)
    other = natsjwt.encode({"sub": "y"}, signer).split(".")[1]
    for bad in (f"{header}.{other}.{sig}", f"{header}.{body}", "x.y.z", ""):
        with pytest.raises(natsjwt.NatsJwtError):
            natsjwt.decode(bad, SERVER)


def test_nkey_public_keys_are_checked():
    raw = os.urandom(32)
    key = encode_public(USER, raw)
    assert key.startswith("U") and decode_public(key, USER) == raw
    with pytest.raises(NkeyError):
        decode_public(key, ACCOUNT)
    with pytest.raises(NkeyError):
        decode_public(key[:-1] + ("A" if key[-1] != "A" else "B"), USER)


def test_xkeys_seal_for_one_recipient_only():
    alice, bob, eve = XKey.create(), XKey.create(), XKey.create()
    assert alice.public_key.startswith("X") and alice.seed.startswith("SX")
    sealed = alice.seal(b"secret", bob.public_key)
    assert sealed.startswith(b"xkv1") and b"secret" not in sealed
    assert bob.open(sealed, alice.public_key) == b"secret"
    assert XKey(bob.seed).open(sealed, alice.public_key) == b"secret"
    with pytest.raises(XKeyError):
        eve.open(sealed, alice.public_key)


def test_granted_user_jwt_has_the_tokens_exp_the_users_permissions_and_account_app():
    keys = CalloutKeys.create()
    callout = AuthCallout(None, Settings(jwt_secret=SECRET), keys)  # type: ignore[arg-type]
    claims_ = TokenVerifier(secret=SECRET).verify(mint(SECRET, "alice", 30))
    user_nkey = encode_public(USER, os.urandom(32))
    got = natsjwt.decode(callout.user_jwt(claims_, user_nkey), ACCOUNT)
    assert got["iss"] == keys.signer.public_key and got["sub"] == user_nkey and got["aud"] == "APP"
    assert got["exp"] == claims_.exp
    assert got["nats"]["pub"] == {"allow": list(permissions.for_user("alice").publish)}
    assert got["nats"]["sub"] == {"allow": list(permissions.for_user("alice").subscribe)}
    assert "resp" not in got["nats"] and got["nats"]["type"] == "user"


# key files

def test_keys_are_made_once_in_the_data_dir_and_kept_secret(tmp_path):
    settings = Settings(data_dir=str(tmp_path / "data"))
    first, again = load_keys(settings), load_keys(settings)
    assert first.signer.public_key == again.signer.public_key and first.signer.public_key.startswith("A")
    assert first.xkey.public_key == again.xkey.public_key
    for name in ("callout.nk", "callout.xk"):
        assert stat.S_IMODE((tmp_path / "data" / name).stat().st_mode) == 0o600
    env = server_env(first, "pw")
    assert env == {"DOCCHAT_CALLOUT_ISSUER": first.signer.public_key,
                   "DOCCHAT_CALLOUT_XKEY": first.xkey.public_key, "DOCCHAT_CALLOUT_PASSWORD": "pw"}


def test_keys_from_settings_win_over_files(tmp_path):
    made = CalloutKeys.create()
    settings = Settings(data_dir=str(tmp_path), callout_seed=made.signer.seed, callout_xkey_seed=made.xkey.seed)
    got = load_keys(settings)
    assert got.signer.public_key == made.signer.public_key and got.xkey.public_key == made.xkey.public_key
    assert not list(tmp_path.iterdir())


def test_processes_starting_together_on_a_fresh_data_dir_share_one_dev_secret_and_callout_keys(tmp_path):
    """Each process makes the secrets if they are missing; those starting at the same moment (two
    `docchat assistant`s, hosts of a cluster) must all end up with the same ones, and none may fail."""
    script = ("import sys, time; from actors.settings import Settings; from gateway.devtoken import with_dev_secret;"
              " from gateway.keys import load_keys; s = Settings(data_dir=sys.argv[1]);"
              " time.sleep(max(0.0, float(sys.argv[2]) - time.time()));"  # all start at the same moment
              " print(with_dev_secret(s).jwt_secret, *(k.public_key for k in vars(load_keys(s)).values()))")
    for attempt in range(3):
        data, at = tmp_path / f"data{attempt}", time.time() + 2.5
        procs = [subprocess.Popen([sys.executable, "-c", script, str(data), str(at)], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(12)]
        outs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0] * 12, [err for _, err in outs if err]
        seen = {out.strip().splitlines()[-1] for out, _ in outs}  # the last line: after any log lines
        assert len(seen) == 1 and all(len(part) > 20 for part in seen.pop().split())
        assert sorted(p.name for p in data.iterdir()) == ["callout.nk", "callout.xk", "dev-jwt-secret"]
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in data.iterdir())
