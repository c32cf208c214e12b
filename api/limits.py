"""Request size limits, enforced before a body is parsed: a whole ``POST /v1/events`` body, any other
request body, and (in ``api/events.py``) one event.

``MAX_BODY_BYTES`` holds the largest legitimate batch five times over: 1,000 events with 200-character
ids, 100-character sources, a transaction hash, a marketplace and a 33-digit price take about 0.9 MB
(``tests/test_door.py::test_the_largest_legitimate_batch_fits`` measures it). Larger bodies get 413 in the
API's error format, whether they announce their length or stream in chunks.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nftpulse.domain.events import MAX_EVENT_BYTES, MAX_STRING_CHARS

__all__ = ["MAX_BODY_BYTES", "MAX_EVENT_BYTES", "MAX_OTHER_BODY_BYTES", "MAX_STRING_CHARS", "BodyLimit"]

#: ``POST /v1/events``: a batch of up to 1,000 events.
MAX_BODY_BYTES = 5 * 1024 * 1024
#: Every other route's body (profiles, subscriptions, actions, provider callbacks).
MAX_OTHER_BODY_BYTES = 256 * 1024

_INGEST_PATH = "/v1/events"


class _TooLarge(Exception):
    pass


def limit_for(path: str) -> int:
    return MAX_BODY_BYTES if path.rstrip("/") == _INGEST_PATH else MAX_OTHER_BODY_BYTES


async def _refuse(send: Send, limit: int) -> None:
    body = orjson.dumps(
        {
            "detail": "request body too large",
            "errors": [{"field": "body", "reason": f"at most {limit} bytes; split the batch"}],
        }
    )
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: 413 for a body over its route's limit, without reading past the limit."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = limit_for(scope["path"])
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _refuse(send, limit)
                return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if started:
                raise
            await _refuse(send, limit)
