"""An explicit registry of delivery channels, built from configuration (no import side effects)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx

from nftpulse.channels.base import Channel
from nftpulse.channels.email import SendGridConfig, SendGridEmailChannel, SmtpConfig, SmtpEmailChannel
from nftpulse.channels.in_app import InAppChannel, InboxWriter
from nftpulse.channels.push import WebPushChannel, WebPushConfig
from nftpulse.channels.sms import TwilioConfig, TwilioSmsChannel
from nftpulse.channels.webhook import WebhookChannel, WebhookConfig


@dataclass(frozen=True)
class ChannelsConfig:
    """Which providers are configured. E-mail prefers SendGrid and falls back to SMTP when only that is
    given; a channel whose provider is not configured is simply absent from the registry."""

    sendgrid: SendGridConfig | None = None
    smtp: SmtpConfig | None = None
    twilio: TwilioConfig | None = None
    webpush: WebPushConfig | None = None
    webhook: WebhookConfig | None = field(default_factory=WebhookConfig)


class UnknownChannelError(KeyError):
    """No channel of that name is configured."""


class ChannelRegistry:
    """Channels by name."""

    def __init__(self, channels: list[Channel] | None = None) -> None:
        self._channels: dict[str, Channel] = {}
        for channel in channels or []:
            self.register(channel)

    def register(self, channel: Channel) -> None:
        """Add ``channel``; a second channel with the same name is an error, not a silent override."""
        if channel.name in self._channels:
            raise ValueError(f"channel {channel.name!r} registered twice")
        self._channels[channel.name] = channel

    def get(self, name: str) -> Channel:
        """The channel called ``name`` or :class:`UnknownChannelError`."""
        try:
            return self._channels[name]
        except KeyError:
            raise UnknownChannelError(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._channels

    def __iter__(self) -> Iterator[str]:
        return iter(self._channels)

    def names(self) -> list[str]:
        """Configured channel names."""
        return list(self._channels)

    async def aclose(self) -> None:
        """Release the channels' connection pools."""
        for channel in self._channels.values():
            closer = getattr(channel, "aclose", None)
            if closer is not None:
                await closer()
            elif (sync_close := getattr(channel, "close", None)) is not None:
                sync_close()


def build_registry(
    config: ChannelsConfig,
    inbox_writer: InboxWriter | None = None,
    http_client: httpx.AsyncClient | None = None,
) -> ChannelRegistry:
    """Build the registry once (worker start-up) from configuration and injected dependencies."""
    registry = ChannelRegistry()
    if inbox_writer is not None:
        registry.register(InAppChannel(inbox_writer))
    if config.sendgrid is not None:
        registry.register(SendGridEmailChannel(config.sendgrid))
    elif config.smtp is not None:
        registry.register(SmtpEmailChannel(config.smtp))
    if config.twilio is not None:
        registry.register(TwilioSmsChannel(config.twilio))
    if config.webpush is not None:
        registry.register(WebPushChannel(config.webpush))
    if config.webhook is not None:
        registry.register(WebhookChannel(config.webhook, client=http_client))
    return registry
