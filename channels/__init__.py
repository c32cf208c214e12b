"""Delivery channels behind one interface (:class:`channels.base.Channel`), chosen from an explicit
registry (:func:`channels.registry.build_registry`). Importing this package registers nothing."""

from nftpulse.channels.base import (
    Channel,
    DeliveryError,
    DeliveryReceipt,
    OutboundMessage,
    PermanentDeliveryError,
    PushSubscription,
    TransientDeliveryError,
)

__all__ = [
    "Channel",
    "DeliveryError",
    "DeliveryReceipt",
    "OutboundMessage",
    "PermanentDeliveryError",
    "PushSubscription",
    "TransientDeliveryError",
]
