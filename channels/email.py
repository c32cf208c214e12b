"""E-mail delivery: SendGrid's v3 Mail Send through the official SDK, or plain SMTP as the alternative.

Both SDK paths are blocking (urllib, smtplib), so they run in a worker thread: the event loop of the
Temporal worker must never block on a provider.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import urllib.error
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formataddr, make_msgid
from typing import Any

from python_http_client.exceptions import HTTPError as SendGridHTTPError
from sendgrid import SendGridAPIClient

from nftpulse.channels.base import (
    DeliveryReceipt,
    OutboundMessage,
    PermanentDeliveryError,
    TransientDeliveryError,
    classify_http_status,
)
from nftpulse.core.delivery import SENDGRID_IDEMPOTENCY_ARG, SENDGRID_NOTIFICATION_ARG, is_email


@dataclass(frozen=True)
class SendGridConfig:
    """SendGrid credentials and sender."""

    api_key: str
    from_email: str
    from_name: str = "Pulse"
    host: str = "https://api.sendgrid.com"
    timeout_s: float = 10.0
    #: SendGrid validates but does not deliver; for staging.
    sandbox_mode: bool = False


@dataclass(frozen=True)
class SmtpConfig:
    """An SMTP relay. ``starttls`` upgrades a plain connection; ``implicit_tls`` connects with TLS (465)."""

    host: str
    port: int = 587
    from_email: str = "alerts@pulse.invalid"
    from_name: str = "Pulse"
    username: str | None = None
    password: str | None = None
    starttls: bool = True
    implicit_tls: bool = False
    timeout_s: float = 10.0


def sendgrid_body(config: SendGridConfig, message: OutboundMessage) -> dict[str, Any]:
    """The Mail Send v3 request body for ``message`` (text first, then HTML, as the API requires)."""
    content = [{"type": "text/plain", "value": message.text or message.subject}]
    if message.html:
        content.append({"type": "text/html", "value": message.html})
    custom_args = {SENDGRID_IDEMPOTENCY_ARG: message.idempotency_key}
    if message.notification_id:
        custom_args[SENDGRID_NOTIFICATION_ARG] = message.notification_id
    body: dict[str, Any] = {
        "personalizations": [{"to": [{"email": message.to}], "custom_args": custom_args}],
        "from": {"email": config.from_email, "name": config.from_name},
        "subject": message.subject,
        "content": content,
        "categories": [f"kind_{message.kind}", f"severity_{message.severity}"],
        "headers": {"X-Pulse-Idempotency-Key": message.idempotency_key},
    }
    if config.sandbox_mode:
        body["mail_settings"] = {"sandbox_mode": {"enable": True}}
    return body


class SendGridEmailChannel:
    """E-mail through SendGrid's official SDK (``SendGridAPIClient(api_key, host=...)``)."""

    name = "email"

    def __init__(self, config: SendGridConfig) -> None:
        self.config = config
        self._client = SendGridAPIClient(config.api_key, host=config.host)
        # python_http_client builds a child client per URL segment and copies the timeout over.
        self._client.client.timeout = config.timeout_s

    def _send_blocking(self, body: dict[str, Any]) -> Any:
        return self._client.send(body)

    async def send(self, message: OutboundMessage) -> DeliveryReceipt:
        """Send one e-mail; 202 means accepted (delivery comes later through the event webhook)."""
        if not is_email(message.to):
            raise PermanentDeliveryError(
                self.name, f"not an e-mail address: {message.to!r}", code="invalid_address"
            )
        body = sendgrid_body(self.config, message)
        try:
            response = await asyncio.to_thread(self._send_blocking, body)
        except SendGridHTTPError as exc:
            raw = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else str(exc.body)
            retry_after = exc.headers.get("Retry-After") if exc.headers is not None else None
            error = classify_http_status(self.name, int(exc.status_code), raw, retry_after)
            raise (error or TransientDeliveryError(self.name, f"HTTP {exc.status_code}")) from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise TransientDeliveryError(self.name, f"connection failed: {exc}") from exc
        status = int(response.status_code)
        error = classify_http_status(self.name, status)
        if error is not None:  # pragma: no cover - the SDK raises for non-2xx already
            raise error
        message_id = response.headers.get("X-Message-Id") if response.headers is not None else None
        return DeliveryReceipt(
            channel=self.name, status="queued", provider_message_id=message_id, detail={"http_status": status}
        )


def build_email(from_email: str, from_name: str, message: OutboundMessage) -> EmailMessage:
    """A multipart/alternative e-mail (text, then HTML) with the idempotency key as a header."""
    mail = EmailMessage()
    mail["Subject"] = message.subject
    mail["From"] = formataddr((from_name, from_email))
    mail["To"] = message.to
    domain = from_email.rsplit("@", 1)[-1] or None
    mail["Message-ID"] = make_msgid(idstring=message.idempotency_key, domain=domain)
    mail["X-Pulse-Idempotency-Key"] = message.idempotency_key
    if message.notification_id:
        mail["X-Pulse-Notification-Id"] = message.notification_id
    mail.set_content(message.text or message.subject)
    if message.html:
        mail.add_alternative(message.html, subtype="html")
    return mail


class SmtpEmailChannel:
    """E-mail through an SMTP relay (smtplib in a worker thread; one connection per message)."""

    name = "email"

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    def _send_blocking(self, mail: EmailMessage) -> dict[str, tuple[int, bytes]]:
        cfg = self.config
        smtp: smtplib.SMTP
        if cfg.implicit_tls:
            smtp = smtplib.SMTP_SSL(
                cfg.host, cfg.port, timeout=cfg.timeout_s, context=ssl.create_default_context()
            )
        else:
            smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s)
        with smtp:
            smtp.ehlo()
            if cfg.starttls and not cfg.implicit_tls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if cfg.username:
                smtp.login(cfg.username, cfg.password or "")
            return smtp.send_message(mail)

    async def send(self, message: OutboundMessage) -> DeliveryReceipt:
        """Send one e-mail; SMTP 4xx replies and connection failures are transient, 5xx permanent."""
        if not is_email(message.to):
            raise PermanentDeliveryError(
                self.name, f"not an e-mail address: {message.to!r}", code="invalid_address"
            )
        mail = build_email(self.config.from_email, self.config.from_name, message)
        try:
            refused = await asyncio.to_thread(self._send_blocking, mail)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise _smtp_error(self.name, min(codes) if codes else 550, str(exc.recipients)) from exc
        except smtplib.SMTPAuthenticationError as exc:
            raise PermanentDeliveryError(
                self.name, f"authentication failed: {exc.smtp_code}", code=exc.smtp_code
            ) from exc
        except smtplib.SMTPResponseException as exc:
            raise _smtp_error(self.name, exc.smtp_code, str(exc.smtp_error)) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientDeliveryError(self.name, f"connection failed: {exc}") from exc
        if refused:  # only some recipients refused; we send to one, so this is that one
            code = min(code for code, _ in refused.values())
            raise _smtp_error(self.name, code, str(refused))
        return DeliveryReceipt(channel=self.name, status="sent", provider_message_id=str(mail["Message-ID"]))


def _smtp_error(channel: str, code: int, text: str) -> TransientDeliveryError | PermanentDeliveryError:
    if 400 <= code < 500:
        return TransientDeliveryError(channel, f"SMTP {code}: {text[:200]}", code=code)
    return PermanentDeliveryError(channel, f"SMTP {code}: {text[:200]}", code=code)
