"""In-app delivery: hands the notification to an injected inbox writer (the database layer lives in
``store/``), so this module has no database code and tests can pass any async callable."""

from __future__ import annotations

from typing import Protocol

from nftpulse.channels.base import DeliveryReceipt, OutboundMessage, PermanentDeliveryError


class InboxWriter(Protocol):
    """Stores one inbox row and returns its id; must be idempotent on ``message.idempotency_key``
    (a retried activity calls it again) and publishes the row to the user's live stream."""

    async def __call__(self, message: OutboundMessage) -> str:
        """Store ``message`` (or find the row stored earlier under its key) and return the row id."""
        ...


class InAppChannel:
    """The in-app inbox."""

    name = "in_app"

    def __init__(self, writer: InboxWriter) -> None:
        self._writer = writer

    async def send(self, message: OutboundMessage) -> DeliveryReceipt:
        """Write the inbox row; writer errors propagate unchanged (the activity's retry policy applies)."""
        if not message.user_id:
            raise PermanentDeliveryError(self.name, "no user id", code="no_user")
        row_id = await self._writer(message)
        return DeliveryReceipt(channel=self.name, status="delivered", provider_message_id=str(row_id))
