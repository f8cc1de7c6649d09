"""The auth callout's keys: its account nkey (signs user JWTs) and its xkey (seals requests).

Both come from settings (DOCCHAT_CALLOUT_SEED, DOCCHAT_CALLOUT_XKEY_SEED) or are made once and
kept in the data directory (mode 0600). nats.conf needs their public halves: `server_env`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from actors.settings import Settings

from .natsjwt import NkeySigner
from .nkeycodec import ACCOUNT
from .secretfile import made_once
from .xkeys import XKey

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


def load_keys(settings: Settings) -> CalloutKeys:
    """The keys from settings, else from (or newly made in) settings.data_dir."""
    data = Path(settings.data_dir)
    seed = settings.callout_seed or made_once(data / SEED_FILE, lambda: NkeySigner.create(ACCOUNT).seed)
    xseed = settings.callout_xkey_seed or made_once(data / XKEY_FILE, lambda: XKey.create().seed)
    return CalloutKeys(NkeySigner(seed, ACCOUNT), XKey(xseed))


def server_env(keys: CalloutKeys, callout_password: str) -> dict[str, str]:
    """The DOCCHAT_CALLOUT_* variables nats.conf reads (pass as EmbeddedNats extra_env)."""
    return {
        "DOCCHAT_CALLOUT_ISSUER": keys.signer.public_key,
        "DOCCHAT_CALLOUT_XKEY": keys.xkey.public_key,
        "DOCCHAT_CALLOUT_PASSWORD": callout_password,
    }
