"""FastAPI dependencies, as ``Annotated`` aliases: the services a route may ask for and who is calling."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from temporalio.client import Client

from nftpulse.api.backlog import BacklogMonitor
from nftpulse.core.settings import Settings
from nftpulse.store import keys
from nftpulse.store.cache import EntityCache
from nftpulse.store.db import Database
from nftpulse.store.keys import Principal


class KeyRateLimiter:
    """A token bucket per API key: ``rate`` requests a second on average, ``burst`` at once.

    Per API process (several API replicas each allow the rate): it keeps one key from crowding out the
    others on this process, which is what a limit at the door is for; a shared quota would cost every
    request a round trip to a shared store.
    """

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._max = max_keys
        self._buckets: dict[int, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def wait_s(self, key_id: int, now: float | None = None) -> float:
        """0 when the request may go ahead (and is counted), else the seconds until it may."""
        if self._rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, at = self._buckets.get(key_id, (self._burst, now))
            tokens = min(self._burst, tokens + (now - at) * self._rate)
            if tokens >= 1.0:
                if len(self._buckets) >= self._max and key_id not in self._buckets:
                    self._buckets.clear()
                self._buckets[key_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / self._rate


@dataclass
class Services:
    settings: Settings
    db: Database
    cache: EntityCache
    temporal: Client | None
    backlog: BacklogMonitor
    keys: keys.KeyCache
    limits: KeyRateLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.limits = KeyRateLimiter(self.settings.key_rate_per_s, self.settings.key_rate_burst)


def get_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(get_services)]

_bearer = HTTPBearer(auto_error=False)


def get_principal(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise HTTPException(
            401,
            "missing bearer token: send Authorization: Bearer <key>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    principal = services.keys.authenticate(credentials.credentials)
    if principal is None:
        raise HTTPException(401, "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    wait = services.limits.wait_s(principal.key_id)
    if wait > 0:
        raise HTTPException(
            429,
            f"this key's rate limit ({services.settings.key_rate_per_s:g} requests/s) is reached",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(scope: str):  # type: ignore[no-untyped-def]
    def check(principal: PrincipalDep) -> Principal:
        if not principal.allows(scope):
            raise HTTPException(403, f"this key lacks the '{scope}' scope")
        return principal

    return Depends(check)


IngestKey = Annotated[Principal, require("ingest")]
ReadKey = Annotated[Principal, require("read")]
AdminKey = Annotated[Principal, require("admin")]
