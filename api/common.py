"""What the users, subscriptions and inbox routers share: who may reach a user's data, the user id in
their paths, strict request bodies and timestamps as they answer them.

Access: a key with scope ``user:<id>`` reaches only that user's data, ``admin`` everyone's; any other key
gets 403. Bad input is answered 422 naming each field (``api/errors.py``).
"""

from __future__ import annotations

import re
from datetime import datetime, time
from typing import Annotated

from fastapi import HTTPException, Path
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
)

from nftpulse.api.errors import InvalidInput
from nftpulse.domain.events import INT64_MAX
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


def _wall_clock(v: time) -> time:
    if v.tzinfo is not None:
        raise ValueError("a time of day in the user's time zone: without an offset")
    return v


#: A time of day in the user's time zone (``08:00`` or ``08:00:00``), answered as ``08:00:00``. Not JSON
#: Schema's ``format: time``, which is RFC 3339's and demands an offset that a wall-clock time in a named
#: zone does not have.
LocalTime = Annotated[
    time,
    AfterValidator(_wall_clock),
    PlainSerializer(lambda v: v.isoformat(), return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?$",
            "examples": ["08:00"],
        }
    ),
]


#: A row id, sequence number or offset: what a signed 64-bit column holds.
Int64 = Annotated[int, Field(ge=0, le=INT64_MAX)]
#: A row id in a request body: positive, within int64.
RowId = Annotated[int, Field(ge=1, le=INT64_MAX)]

_ASCII_DIGITS = re.compile(r"[0-9]{1,19}")


def _ascii_digits(value: object) -> object:
    # Query values arrive as text; pydantic alone would also take " 1", "+1", "1.0" and "1_0".
    if isinstance(value, str) and not _ASCII_DIGITS.fullmatch(value):
        raise ValueError("must be a whole number written in ASCII digits")
    return value


#: A count or offset in a query string: ASCII digits only, within int64 (``Query`` adds tighter bounds).
QueryInt = Annotated[int, BeforeValidator(_ascii_digits), Field(ge=0, le=INT64_MAX)]


def parse_row_id(raw: str, field: str, reason: str) -> int:
    """A row id sent as text (a path segment, a cursor, ``Last-Event-ID``): ASCII digits only (``³`` and
    other Unicode digits are refused, where ``str.isdigit`` and ``int`` would take them), within int64;
    else 422 naming ``field``."""
    if not _ASCII_DIGITS.fullmatch(raw) or int(raw) > INT64_MAX:
        raise InvalidInput([{"field": field, "reason": reason}])
    return int(raw)


def authorize(principal: Principal, user_id: str) -> None:
    """Only the user's own key (``user:<id>``) or an admin key reaches a user's data."""
    if "admin" in principal.scopes or user_id in principal.user_ids():
        return
    raise HTTPException(403, f"this key does not reach user {user_id!r}")


class Strict(BaseModel):
    """A request body: unknown fields are refused (422 naming them), not silently dropped."""

    model_config = ConfigDict(extra="forbid")
