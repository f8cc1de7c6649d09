"""The auth callout's keys: its account nkey (signs user JWTs) and its xkey (seals requests).

Both come from settings (DOCCHAT_CALLOUT_SEED, DOCCHAT_CALLOUT_XKEY_SEED) or are made once and
kept in the data directory (mode 0600). nats.conf needs their public halves: `server_env`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import structlog

from actors.settings import Settings

from .natsjwt import NkeySigner
from .nkeycodec import ACCOUNT
from .xkeys import XKey

log = structlog.get_logger("gateway")

SEED_FILE = "callout.nk"
XKEY_FILE = "callout.xk"


@dataclass(frozen=True)
class CalloutKeys:
    """The callout account's signing nkey and its xkey."""

    signer: NkeySigner
    xkey: XKey

    @classmethod
    def create(cls) -> "CalloutKeys":
        """Fresh random keys (tests, one-off servers)."""
        return cls(NkeySigner.create(ACCOUNT), XKey.create())


def _load_or_create(path: Path, make: "type[NkeySigner] | type[XKey]") -> str:
    if path.exists():
        return path.read_text().strip()
    seed = make.create().seed
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write-then-rename so a crash never leaves a half-written seed; 0600: it is a secret.
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(seed + "\n")
    os.replace(tmp, path)
    log.info("callout_key_created", path=str(path))
    return seed


def load_keys(settings: Settings) -> CalloutKeys:
    """The keys from settings, else from (or newly made in) settings.data_dir."""
    data = Path(settings.data_dir)
    seed = settings.callout_seed or _load_or_create(data / SEED_FILE, NkeySigner)
    xseed = settings.callout_xkey_seed or _load_or_create(data / XKEY_FILE, XKey)
    return CalloutKeys(NkeySigner(seed, ACCOUNT), XKey(xseed))


def server_env(keys: CalloutKeys, callout_password: str) -> dict[str, str]:
    """The DOCCHAT_CALLOUT_* variables nats.conf reads (pass as EmbeddedNats extra_env)."""
    return {
        "DOCCHAT_CALLOUT_ISSUER": keys.signer.public_key,
        "DOCCHAT_CALLOUT_XKEY": keys.xkey.public_key,
        "DOCCHAT_CALLOUT_PASSWORD": callout_password,
    }
