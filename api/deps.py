"""FastAPI dependencies, as ``Annotated`` aliases: the services a route may ask for and who is calling."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class Services:
    settings: Settings
    db: Database
    cache: EntityCache
    temporal: Client | None
    backlog: BacklogMonitor
    keys: keys.KeyCache


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
