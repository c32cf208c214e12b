"""Standard Webhooks (https://www.standardwebhooks.com) verification for producers that post Pulse's own
schema: ``webhook-signature: v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}.{body}")>`` (several
space-separated signatures allowed, for secret rotation), where the key is the base64 part of the
source's ``whsec_…`` secret, and ``webhook-timestamp`` within five minutes of now (replays are refused).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

TOLERANCE_S = 300
SECRET_PREFIX = "whsec_"


class SignatureError(ValueError):
    """Why a delivery's signature is refused (said in the 401)."""


def _key(secret: str) -> bytes:
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a source secret must be whsec_ followed by base64") from None
    if not key:
        raise ValueError("a source secret must not be empty")
    return key


def verify(
    secret: str | Sequence[str], headers: Mapping[str, str], body: bytes, now: float | None = None
) -> str:
    """Check ``body``'s Standard Webhooks signature under ``secret`` (or any of several: a source's secrets
    during a rotation); returns the message id."""
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msg_id and stamp and signatures):
        raise SignatureError("webhook-id, webhook-timestamp and webhook-signature are required")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise SignatureError("webhook-timestamp must be Unix seconds") from None
    if abs((time.time() if now is None else now) - timestamp) > TOLERANCE_S:
        raise SignatureError("webhook-timestamp is more than five minutes from now")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    keys = [secret] if isinstance(secret, str) else list(secret)
    expected = [hmac.new(_key(k), signed, hashlib.sha256).digest() for k in keys]
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        if any(hmac.compare_digest(e, given) for e in expected):
            return msg_id
    raise SignatureError("no signature matches the source's secret")
