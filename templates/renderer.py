"""Render a notification for one channel and locale from the Jinja2 sources in ``templates/sources``.

Layout: ``sources/layouts/<channel>.<ext>`` gives each channel its shape (e-mail HTML, SMS, webhook JSON,
…); ``sources/<locale>/<kind>.j2`` holds the wording of one notification kind in one language as macros
(``subject``, ``summary``, ``action``, ``sms``, ``push``); ``sources/<locale>/_common.j2`` the shared
labels. Numbers, money, percentages and times are formatted with Babel in the user's locale and time
zone. HTML layouts are autoescaped: provider and user data (collection names, evidence) are untrusted.

Digests have their own sources: ``sources/<locale>/digest.j2`` (wording) and
``sources/layouts/digest_<channel>.*`` (shape), rendered from a :class:`DigestContext` whose groups
(one kind for one entity each) are laid out by kind, then entity.

Public entry points: :func:`render`, :func:`inbox_text` and :func:`render_digest`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel.core import Locale, UnknownLocaleError
from babel.dates import format_datetime, format_timedelta
from babel.numbers import format_currency, format_decimal, format_percent, get_currency_name
from jinja2 import Environment, FileSystemLoader, StrictUndefined, pass_context
from jinja2.runtime import Context
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from nftpulse.domain.feedback import Notice
from nftpulse.templates.gsm import SmsSegments, segment, to_gsm_friendly

SOURCES = Path(__file__).parent / "sources"

TemplateKind = Literal[
    "trust_change",
    "price_movement",
    "risk_change",
    "fraud_finding",
    "market_update",
    "wallet_activity",
    "correction",
]
TemplateChannel = Literal["in_app", "email_html", "email_text", "sms", "push", "webhook"]
KINDS: tuple[TemplateKind, ...] = get_args(TemplateKind)
CHANNELS: tuple[TemplateChannel, ...] = get_args(TemplateChannel)
LOCALES = ("en", "de")
DEFAULT_LOCALE = "en"

_LAYOUT_FILE = {
    "in_app": "layouts/in_app.json.j2",
    "email_html": "layouts/email.html",
    "email_text": "layouts/email.txt.j2",
    "sms": "layouts/sms.txt.j2",
    "push": "layouts/push.json.j2",
    "webhook": "layouts/webhook.json.j2",
}
_JSON_CHANNELS = frozenset({"in_app", "push", "webhook"})
#: Currencies Babel knows as ISO 4217 get the locale's currency format; crypto codes (ETH, WETH, SOL…)
#: are formatted as a decimal followed by the code, with up to four decimals.
_CRYPTO_PATTERN = "#,##0.00##"


def _known_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        # A ValueError is what pydantic reports as a validation error naming the field.
        raise ValueError(f"unknown time zone {name!r}") from exc
    return name


#: An IANA time zone name, checked against the zone database.
TimeZoneName = Annotated[str, AfterValidator(_known_zone)]


class Holding(BaseModel):
    """The user's position the notification is about."""

    model_config = ConfigDict(frozen=True)

    label: str = Field(description="e.g. 'Token #1234' or 'Portfolio wallet 0xab…cd'")
    quantity: int = 1
    value: Decimal | None = Field(default=None, description="current value in ``currency``")
    currency: str | None = None


class RuleInfo(BaseModel):
    """Which of the user's rules fired, and its parameters, for the explanation."""

    model_config = ConfigDict(frozen=True)

    id: str
    #: ``watch``: an alert every subscription gets without a rule (fraud findings, a wallet's activity).
    kind: Literal["threshold", "relative_change", "trend_reversal", "anomaly", "new_risk", "watch"]
    metric: str
    level: Decimal | None = None
    direction: Literal["below", "above"] | None = None
    pct: float | None = None
    window_s: float | None = None
    name: str | None = Field(default=None, description="the user's own name for the rule, if any")


class Finding(BaseModel):
    """A fraud finding as its producer reported it: what, how bad, who found it, who is involved, why."""

    model_config = ConfigDict(frozen=True)

    category: str = Field(description="the finding's kind, e.g. wash_trading, stolen_asset, impersonation")
    source: str = Field(default="Pulse", description="the detector that reported it")
    severity: str = "high"
    evidence: list[str] = Field(default_factory=list)
    id: str | None = Field(default=None, description="the producer's finding id")
    status: Literal["open", "resolved"] = "open"
    wallets: list[str] = Field(default_factory=list, description="wallets the finding names")


class Activity(BaseModel):
    """A watched wallet's trade, listing or transfer."""

    model_config = ConfigDict(frozen=True)

    type: Literal["sale", "transfer", "mint", "burn", "listing", "listing_cancelled"]
    role: Literal["seller", "buyer", "sender", "recipient", "lister"]
    wallet: str
    nft_key: str
    nft_name: str
    counterparty: str | None = None
    price: str | None = None
    currency: str | None = None
    event_id: str | None = None


class Correction(BaseModel):
    """What a correction takes back: an earlier notification caused only by events since retracted (a
    chain reorganisation, a provider's ``removed`` log)."""

    model_config = ConfigDict(frozen=True)

    #: The corrected notification's id and subject as it was sent.
    notification_id: int
    original_title: str
    #: The retracted events, as ``source/id``.
    retracted: list[str]


class FeedbackLinks(BaseModel):
    """Where the user rates the notification (``api.feedback``), proved by the notification's token."""

    model_config = ConfigDict(frozen=True)

    useful: str
    not_useful: str
    too_many: str
    url: str | None = Field(default=None, description='POST {"verdict": …} here (webhook receivers)')


class NotificationContext(BaseModel):
    """Everything a template may show. Values are raw (Decimal strings, labels); templates format them."""

    model_config = ConfigDict(frozen=True)

    idempotency_key: str
    severity: Literal["info", "warning", "critical"]
    timezone: TimeZoneName = "UTC"
    user_name: str | None = None
    entity_key: str
    entity_name: str
    entity_url: str
    rule: RuleInfo
    metric: str
    before: Any = None
    after: Any = None
    unit: Literal["currency", "score", "level", "count", "number", "text"] = "number"
    currency: str | None = None
    change_pct: float | None = Field(default=None, description="relative move as a fraction, e.g. -0.213")
    data_at: datetime = Field(description="time of the data that triggered the alert")
    detected_at: datetime
    holding: Holding | None = None
    finding: Finding | None = None
    activity: Activity | None = None
    correction: Correction | None = None
    preferences_url: str | None = None
    #: Web push: the beacon that records the click (stopping escalation) and redirects to ``entity_url``.
    click_url: str | None = None
    #: One link per verdict (useful, not_useful, too_many), and ``url`` for a POST of ``{"verdict": …}``.
    feedback: FeedbackLinks | None = None
    #: The rule fired with a sensitivity feedback changed since its last notification: say so.
    adaptation: Notice | None = None


@dataclass(frozen=True)
class Rendered:
    """One rendered notification. ``text`` is always set (plain text / SMS body / push body); ``html``
    only for e-mail HTML; ``data`` for the JSON channels (in-app row, push payload, webhook body)."""

    kind: str
    channel: str
    locale: str
    subject: str
    text: str
    html: str | None = None
    data: dict[str, Any] | None = None
    sms: SmsSegments | None = None


# -- formatting filters ----------------------------------------------------------------------------------


def _dec(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() else None


def _is_iso_currency(code: str, locale: str) -> bool:
    try:
        return get_currency_name(code, locale=locale) != code
    except (UnknownLocaleError, ValueError):
        return False


def format_money(value: Any, currency: str | None, locale: str) -> str:
    """``1.234,50 €`` / ``$1,234.50`` for ISO currencies, ``1,234.5678 ETH`` for crypto codes."""
    amount = _dec(value)
    if amount is None:
        return "-" if value is None else str(value)
    if not currency:
        return format_decimal(amount, format=_CRYPTO_PATTERN, locale=locale)
    code = currency.upper()
    if _is_iso_currency(code, locale):
        return format_currency(amount, code, locale=locale)
    return f"{format_decimal(amount, format=_CRYPTO_PATTERN, locale=locale)}\u00a0{code}"


def format_number(value: Any, locale: str, digits: int = 2) -> str:
    """A decimal with at most ``digits`` fraction digits, grouped per locale."""
    amount = _dec(value)
    if amount is None:
        return "-" if value is None else str(value)
    pattern = "#,##0" + ("." + "#" * digits if digits else "")
    return format_decimal(amount, format=pattern, locale=locale)


def format_pct(value: Any, locale: str, signed: bool = True) -> str:
    """A fraction as a percentage with one decimal: ``-21.3%`` / ``-21,3 %`` (unsigned: magnitude only)."""
    if value is None:
        return "-"
    f = float(value)
    if math.isinf(f) or math.isnan(f):
        return "-"
    if not signed:
        # Unsigned is for prose that already says the direction ("fell 21.3%").
        f = abs(f)
    pattern = "+#,##0.0%;-#,##0.0%" if signed else "#,##0.0%"
    return format_percent(f, format=pattern, locale=locale)


_DATETIME_PATTERNS = {"en": "MMM d, y, h:mm a z", "de": "d. MMM y, HH:mm z"}
_TIME_PATTERNS = {"en": "h:mm a z", "de": "HH:mm z"}


def format_when(value: datetime, tz: str, locale: str, time_only: bool = False) -> str:
    """A time in the user's zone, e.g. ``Mar 1, 2025, 8:05 AM CET`` / ``1. März 2025, 08:05 MEZ``."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    language = Locale.parse(locale).language
    patterns = _TIME_PATTERNS if time_only else _DATETIME_PATTERNS
    pattern = patterns.get(language, patterns["en"])
    return format_datetime(value, pattern, tzinfo=ZoneInfo(tz), locale=locale)


@pass_context
def _f_money(ctx: Context, value: Any, currency: str | None = None) -> str:
    return format_money(value, currency if currency is not None else ctx.get("currency"), ctx["locale"])


@pass_context
def _f_number(ctx: Context, value: Any, digits: int = 2) -> str:
    return format_number(value, ctx["locale"], digits)


@pass_context
def _f_pct(ctx: Context, value: Any, signed: bool = True) -> str:
    return format_pct(value, ctx["locale"], signed)


@pass_context
def _f_when(ctx: Context, value: datetime) -> str:
    return format_when(value, ctx["timezone"], ctx["locale"])


@pass_context
def _f_time(ctx: Context, value: datetime) -> str:
    return format_when(value, ctx["timezone"], ctx["locale"], time_only=True)


@pass_context
def _f_value(ctx: Context, value: Any) -> str:
    """A metric value in the notification's unit."""
    unit = ctx["unit"]
    if value is None:
        return "-"
    if unit == "currency":
        return format_money(value, ctx.get("currency"), ctx["locale"])
    if unit == "score":
        return format_number(value, ctx["locale"], 0)
    if unit == "count":
        return format_number(value, ctx["locale"], 0)
    if unit == "number":
        return format_number(value, ctx["locale"], 4)
    return str(value)


@pass_context
def _f_duration(ctx: Context, seconds: float | None) -> str:
    """A window length in words: ``1 hour`` / ``1 Stunde``."""
    if seconds is None:
        return "-"
    return format_timedelta(timedelta(seconds=seconds), threshold=1.0, locale=ctx["locale"])


def _f_shorten(value: str, width: int) -> str:
    """Cut to ``width`` characters with an ellipsis made of dots (GSM-7 safe)."""
    return value if len(value) <= width else value[: max(width - 2, 1)].rstrip() + ".."


def _build_env(html: bool) -> Environment:
    """One environment per output type. Macros take the autoescape mode of the template that defines
    them, so the kind and label templates must be compiled with escaping for HTML and without for text;
    one environment with per-extension autoescape would let macro output into HTML unescaped."""
    env = Environment(
        loader=FileSystemLoader(str(SOURCES)),
        autoescape=html,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        auto_reload=False,
    )
    env.filters.update(
        money=_f_money,
        number=_f_number,
        pct=_f_pct,
        when=_f_when,
        time=_f_time,
        value=_f_value,
        shorten=_f_shorten,
        duration=_f_duration,
    )
    env.policies["json.dumps_kwargs"] = {"sort_keys": True, "ensure_ascii": False}
    return env


_TEXT_ENV = _build_env(html=False)
_HTML_ENV = _build_env(html=True)


def resolve_locale(locale: str) -> str:
    """The template locale for a user locale: ``de_AT``/``de-CH`` → ``de``; unknown → ``en``."""
    tag = locale.replace("-", "_")
    if tag in LOCALES:
        return tag
    language = tag.split("_", 1)[0].lower()
    return language if language in LOCALES else DEFAULT_LOCALE


_RISK = ("low", "medium", "high", "critical")


def _direction(ctx: NotificationContext) -> Literal["up", "down", "same"]:
    """Which way the value moved: numerically, by risk level, or by the sign of ``change_pct``."""
    if ctx.change_pct is not None and ctx.change_pct != 0:
        return "up" if ctx.change_pct > 0 else "down"
    before, after = _dec(ctx.before), _dec(ctx.after)
    if before is not None and after is not None and before != after:
        return "up" if after > before else "down"
    if isinstance(ctx.before, str) and isinstance(ctx.after, str):
        b, a = ctx.before.lower(), ctx.after.lower()
        if b in _RISK and a in _RISK and a != b:
            return "up" if _RISK.index(a) > _RISK.index(b) else "down"
        if a in ("up", "down"):
            return "up" if a == "up" else "down"
    return "same"


def _collapse(text: str) -> str:
    """Template output to tidy text: trim lines, drop runs of blank lines."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    out: list[str] = []
    for line in lines:
        if not line and out and not out[-1]:
            continue
        out.append(line)
    return "\n".join(out)


def _languages(locale: str) -> tuple[str, str]:
    """The template language for ``locale`` (with fallback) and the Babel locale that formats numbers."""
    lang = resolve_locale(locale)
    try:
        return lang, str(Locale.parse(locale.replace("-", "_")))
    except (UnknownLocaleError, ValueError):
        return lang, lang


def render(
    kind: str, channel: str, locale: str, context: NotificationContext | Mapping[str, Any]
) -> Rendered:
    """Render notification ``kind`` for ``channel`` in ``locale`` (falls back to the language, then
    English). ``locale`` drives Babel formatting (``de_CH`` formats Swiss style with German wording)."""
    if kind not in KINDS:
        raise ValueError(f"unknown notification kind {kind!r}")
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}")
    ctx = context if isinstance(context, NotificationContext) else NotificationContext.model_validate(context)
    lang, babel_locale = _languages(locale)
    variables: dict[str, Any] = {
        **{name: getattr(ctx, name) for name in type(ctx).model_fields},
        "locale": babel_locale,
        "lang": lang,
        "kind": kind,
        "channel": channel,
        "direction": _direction(ctx),
        "kind_template": f"{lang}/{kind}.j2",
        "common_template": f"{lang}/_common.j2",
    }
    module = _TEXT_ENV.get_template(f"{lang}/{kind}.j2").make_module(variables)
    subject = _collapse(str(module.subject()))  # type: ignore[attr-defined]
    if channel == "email_html":
        html = _HTML_ENV.get_template(_LAYOUT_FILE[channel]).render(variables)
        text = _collapse(_TEXT_ENV.get_template(_LAYOUT_FILE["email_text"]).render(variables))
        return Rendered(kind, channel, lang, subject, text=text, html=html.strip() + "\n")
    output = _TEXT_ENV.get_template(_LAYOUT_FILE[channel]).render(variables)
    if channel in _JSON_CHANNELS:
        data = json.loads(output)
        body = str(data.get("body") or data.get("summary") or "")
        return Rendered(kind, channel, lang, subject, text=body, data=data)
    text = _collapse(output)
    if channel == "sms":
        text = to_gsm_friendly(" ".join(text.split()))
        return Rendered(kind, channel, lang, subject, text=text, sms=segment(text))
    return Rendered(kind, channel, lang, subject, text=text)


def inbox_text(kind: str, context: Mapping[str, Any], title: str = "", body: str = "") -> tuple[str, str]:
    """Title and body of an inbox row: ``title`` and ``body`` as stored when detection rendered them,
    else rendered now from the row's stored ``context`` in the locale the user had then (detection
    leaves the text of inbox-only notifications to be rendered when read)."""
    if title:
        return title, body
    rendered = render(kind, "in_app", str(context.get("locale") or DEFAULT_LOCALE), context)
    return rendered.subject[:500], rendered.text


# -- digests ------------------------------------------------------------------------------------------

_DIGEST_LAYOUT_FILE = {
    "in_app": "layouts/digest_in_app.json.j2",
    "email_html": "layouts/digest_email.html",
    "email_text": "layouts/digest_email.txt.j2",
    "sms": "layouts/digest_sms.txt.j2",
    "push": "layouts/digest_push.json.j2",
    "webhook": "layouts/digest_webhook.json.j2",
}


class DigestItemContext(BaseModel):
    """One notification inside a digest group."""

    model_config = ConfigDict(frozen=True)

    title: str
    severity: Literal["info", "warning", "critical"] = "info"
    at: datetime


class DigestGroupContext(BaseModel):
    """The items of one kind for one entity."""

    model_config = ConfigDict(frozen=True)

    kind: TemplateKind
    entity_key: str
    entity_name: str
    entity_url: str
    severity: Literal["info", "warning", "critical"] = "info"
    items: list[DigestItemContext] = Field(min_length=1)


class DigestContext(BaseModel):
    """Everything a digest template may show; ``groups`` come most important first."""

    model_config = ConfigDict(frozen=True)

    digest_key: str
    reason: Literal["schedule", "magnitude", "manual"] = "schedule"
    timezone: TimeZoneName = "UTC"
    user_name: str | None = None
    generated_at: datetime
    groups: list[DigestGroupContext] = Field(min_length=1)
    inbox_url: str | None = None
    preferences_url: str | None = None


def _sections(groups: list[DigestGroupContext]) -> list[dict[str, Any]]:
    """Groups laid out by kind, then entity; kinds in the order of their most important group."""
    sections: dict[str, list[DigestGroupContext]] = {}
    for group in groups:
        sections.setdefault(group.kind, []).append(group)
    return [{"kind": kind, "groups": members} for kind, members in sections.items()]


def render_digest(channel: str, locale: str, context: DigestContext | Mapping[str, Any]) -> Rendered:
    """Render a digest for ``channel`` in ``locale`` (same locale fallback and Babel formatting as
    :func:`render`)."""
    if channel not in _DIGEST_LAYOUT_FILE:
        raise ValueError(f"unknown channel {channel!r}")
    ctx = context if isinstance(context, DigestContext) else DigestContext.model_validate(context)
    lang, babel_locale = _languages(locale)
    severities = [g.severity for g in ctx.groups]
    variables: dict[str, Any] = {
        **{name: getattr(ctx, name) for name in type(ctx).model_fields},
        "locale": babel_locale,
        "lang": lang,
        "channel": channel,
        "kind": "digest",
        "sections": _sections(ctx.groups),
        "item_count": sum(len(g.items) for g in ctx.groups),
        "severity": max(severities, key=_RISK_OF_SEVERITY.index),
        # Filters that format metric values read these; a digest shows titles only.
        "unit": "text",
        "currency": None,
        "digest_template": f"{lang}/digest.j2",
        "common_template": f"{lang}/_common.j2",
    }
    module = _TEXT_ENV.get_template(f"{lang}/digest.j2").make_module(variables)
    subject = _collapse(str(module.subject()))  # type: ignore[attr-defined]
    if channel == "email_html":
        html = _HTML_ENV.get_template(_DIGEST_LAYOUT_FILE[channel]).render(variables)
        text = _collapse(_TEXT_ENV.get_template(_DIGEST_LAYOUT_FILE["email_text"]).render(variables))
        return Rendered("digest", channel, lang, subject, text=text, html=html.strip() + "\n")
    output = _TEXT_ENV.get_template(_DIGEST_LAYOUT_FILE[channel]).render(variables)
    if channel in _JSON_CHANNELS:
        data = json.loads(output)
        body = str(data.get("body") or data.get("summary") or "")
        return Rendered("digest", channel, lang, subject, text=body, data=data)
    text = _collapse(output)
    if channel == "sms":
        text = to_gsm_friendly(" ".join(text.split()))
        return Rendered("digest", channel, lang, subject, text=text, sms=segment(text))
    return Rendered("digest", channel, lang, subject, text=text)


_RISK_OF_SEVERITY = ("info", "warning", "critical")
