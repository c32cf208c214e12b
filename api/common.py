"""What the users, subscriptions and inbox routers share: who may reach a user's data, the user id in
their paths, strict request bodies and timestamps as they answer them.

Access: a key with scope ``user:<id>`` reaches only that user's data, ``admin`` everyone's; any other key
gets 403. Bad input is answered 422 naming each field (``api/errors.py``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import HTTPException, Path
from pydantic import BaseModel, ConfigDict, PlainSerializer, WithJsonSchema

from nftpulse.store.keys import Principal

USER_ID_PATTERN = r"^[A-Za-z0-9_.@:-]{1,120}$"
UserId = Annotated[str, Path(pattern=USER_ID_PATTERN)]

#: A timestamp answered as ``datetime.isoformat()`` (``+00:00``, not pydantic's ``Z``): the form these
#: routes have always answered, which clients may compare as text.
IsoTime = Annotated[
    datetime,
    PlainSerializer(lambda v: v.isoformat(), return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


def authorize(principal: Principal, user_id: str) -> None:
    """Only the user's own key (``user:<id>``) or an admin key reaches a user's data."""
    if "admin" in principal.scopes or user_id in principal.user_ids():
        return
    raise HTTPException(403, f"this key does not reach user {user_id!r}")


class Strict(BaseModel):
    """A request body: unknown fields are refused (422 naming them), not silently dropped."""

    model_config = ConfigDict(extra="forbid")
