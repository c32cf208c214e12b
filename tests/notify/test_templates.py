"""Rendered templates against saved golden files (kind x channel x locale), escaping, SMS encoding.

Regenerate the golden files with ``PULSE_UPDATE_GOLDEN=1 pytest tests/notify/test_templates.py`` and
review the diff.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nftpulse.templates.gsm import segment, to_gsm_friendly
from nftpulse.templates.renderer import (
    CHANNELS,
    KINDS,
    LOCALES,
    Rendered,
    render,
    render_digest,
    resolve_locale,
)

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("PULSE_UPDATE_GOLDEN") == "1"
DATA_AT = datetime(2025, 3, 30, 0, 55, tzinfo=UTC)  # the night Europe switches to summer time
DETECTED_AT = datetime(2025, 3, 30, 0, 56, 30, tzinfo=UTC)
TZ = {"en": "America/New_York", "de": "Europe/Berlin"}

CONTEXTS: dict[str, dict[str, Any]] = {
    "trust_change": dict(
        severity="warning",
        entity_key="collection:ethereum:0xbc4c",
        entity_name="Bored Ape Yacht Club",
        rule=dict(id="rule-trust", kind="threshold", metric="trust", level="50", direction="below"),
        metric="trust",
        before="62",
        after="45",
        unit="score",
        holding=dict(label="Token #1234", value="12.5", currency="ETH"),
    ),
    "price_movement": dict(
        severity="critical",
        entity_key="collection:ethereum:0xbc4c",
        entity_name="Bored Ape Yacht Club",
        rule=dict(id="rule-floor", kind="relative_change", metric="floor", pct=0.2, window_s=3600),
        metric="floor",
        before="12.5",
        after="9.8",
        unit="currency",
        currency="ETH",
        change_pct=-0.216,
        holding=dict(label="Token #1234", quantity=2, value="19.6", currency="ETH"),
    ),
    "risk_change": dict(
        severity="critical",
        entity_key="nft:ethereum:0x1a92:7",
        entity_name="CryptoPunk #7",
        unit="level",
        rule=dict(id="rule-risk", kind="new_risk", metric="risk"),
        metric="risk",
        before="high",
        after="critical",
        holding=dict(label="CryptoPunk #7", value="48000", currency="USD"),
    ),
    "fraud_finding": dict(
        severity="critical",
        entity_key="collection:ethereum:0xdead",
        entity_name="Azuki Elementals",
        rule=dict(id="watch:finding", kind="watch", metric="finding"),
        metric="finding",
        before=None,
        after="open",
        unit="text",
        finding=dict(
            id="chainabuse-7781",
            category="wash_trading",
            source="Chainabuse",
            severity="critical",
            status="open",
            wallets=[
                "0x9f3c00000000000000000000000000000000e1e1",
                "0x1b2c00000000000000000000000000000000f2f2",
            ],
            evidence=["12 round trips A->B->A within 30 days", "Buyer and seller funded by 0x9f3c...e1"],
        ),
    ),
    "market_update": dict(
        severity="info",
        entity_key="collection:ethereum:0xbc4c",
        entity_name="Pudgy Penguins",
        rule=dict(id="rule-trend", kind="trend_reversal", metric="volume"),
        metric="volume",
        before="1520.25",
        after="980.5",
        unit="currency",
        currency="ETH",
        change_pct=-0.355,
    ),
    "wallet_activity": dict(
        severity="info",
        entity_key="wallet:0x9f3c00000000000000000000000000000000e1e1",
        entity_name="Wallet 0x9f3c…e1e1",
        rule=dict(id="watch:activity", kind="watch", metric="activity"),
        metric="activity",
        before=None,
        after="sale",
        unit="text",
        activity=dict(
            type="sale",
            role="seller",
            wallet="0x9f3c00000000000000000000000000000000e1e1",
            nft_key="nft:ethereum:0xbc4c:1234",
            nft_name="Bored Ape #1234",
            counterparty="0x1b2c00000000000000000000000000000000f2f2",
            price="31.5",
            currency="ETH",
            event_id="opensea/0xfeed:12",
        ),
    ),
    "correction": dict(
        severity="warning",
        entity_key="nft:ethereum:0xbc4c:1234",
        entity_name="Bored Ape #1234",
        rule=dict(id="rule-owner", kind="threshold", metric="price_estimate", level="30", direction="above"),
        metric="price_estimate",
        before="31.5",
        after="12.5",
        unit="currency",
        currency="ETH",
        correction=dict(
            notification_id=4211,
            original_title="Bored Ape #1234 price estimate above 30 ETH",
            retracted=["chain/ethereum:0xfeed:12"],
        ),
    ),
}


def context(kind: str, locale: str) -> dict[str, Any]:
    return {
        **CONTEXTS[kind],
        "idempotency_key": f"ntf_golden_{kind}",
        "timezone": TZ[locale],
        "user_name": "Ada" if locale == "en" else "Grete",
        "entity_url": f"https://pulse.example/e/{CONTEXTS[kind]['entity_key']}",
        "preferences_url": "https://pulse.example/settings/notifications",
        "data_at": DATA_AT,
        "detected_at": DETECTED_AT,
    }


def serialise(r: Rendered) -> str:
    """One golden file's text: what the channel would send."""
    head = f"subject: {r.subject}\n\n"
    if r.channel == "email_html":
        assert r.html is not None
        return r.html
    if r.data is not None:
        return head + json.dumps(r.data, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    if r.sms is not None:
        return head + r.text + f"\n\n-- {r.sms.encoding}, {r.sms.units} units, {r.sms.count} segment(s)\n"
    return head + r.text + "\n"


EXT = {"email_html": "html", "in_app": "json", "push": "json", "webhook": "json"}
CASES = [(k, c, loc) for k in KINDS for c in CHANNELS for loc in LOCALES]


@pytest.mark.parametrize(("kind", "channel", "locale"), CASES, ids=["-".join(c) for c in CASES])
def test_golden(kind: str, channel: str, locale: str) -> None:
    rendered = render(kind, channel, locale, context(kind, locale))
    got = serialise(rendered)
    path = GOLDEN / f"{kind}.{channel}.{locale}.{EXT.get(channel, 'txt')}"
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"golden file {path.name} missing; run with PULSE_UPDATE_GOLDEN=1 to create it")
        path.write_text(got, encoding="utf-8")
    assert got == path.read_text(encoding="utf-8"), f"{path.name} differs; PULSE_UPDATE_GOLDEN=1 regenerates"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("severity", ["info", "warning", "critical"])
def test_sms_fits_one_gsm7_segment(kind: str, locale: str, severity: str) -> None:
    r = render(kind, "sms", locale, {**context(kind, locale), "severity": severity})
    assert r.sms is not None
    assert r.sms.encoding == "GSM-7", r.text
    assert r.sms.count == 1, (r.sms.units, r.text)


@pytest.mark.parametrize("kind", KINDS)
def test_wording_follows_severity(kind: str) -> None:
    crit = render(kind, "email_text", "en", {**context(kind, "en"), "severity": "critical"})
    info = render(kind, "email_text", "en", {**context(kind, "en"), "severity": "info"})
    assert crit.subject.startswith("Urgent:") and not info.subject.startswith("Urgent:")
    de = render(kind, "email_text", "de", {**context(kind, "de"), "severity": "critical"})
    assert de.subject.startswith("Dringend:")


def test_email_carries_rule_holding_action_and_evidence() -> None:
    r = render("price_movement", "email_text", "en", context("price_movement", "en"))
    for needle in (
        "Recommended action:",
        "Your rule: Floor price moves 20.0% within 1 hour",
        "Your holding: Token #1234 (x2), worth about 19.60",
        "12.50",
        "9.80",
        "-21.6%",
        "Data as of: Mar 29, 2025, 8:55",
    ):
        assert needle in r.text, needle


def test_html_is_escaped_text_is_not() -> None:
    ctx = {**context("trust_change", "en"), "entity_name": "<script>alert(1)</script> & Co"}
    html = render("trust_change", "email_html", "en", ctx)
    assert html.html is not None
    assert "<script>" not in html.html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co" in html.html
    text = render("trust_change", "email_text", "en", ctx)
    assert "<script>alert(1)</script> & Co" in text.text
    hook = render("trust_change", "webhook", "en", ctx)
    assert hook.data is not None and hook.data["entity"]["name"] == "<script>alert(1)</script> & Co"


def test_locale_resolution_and_regional_formatting() -> None:
    assert resolve_locale("de_AT") == "de" and resolve_locale("de-CH") == "de"
    assert resolve_locale("fr_FR") == "en" and resolve_locale("en") == "en"
    swiss = render("price_movement", "email_text", "de_CH", context("price_movement", "de"))
    assert "Mindestpreis" in swiss.text and "12.50" in swiss.text  # Swiss German: point decimals
    fiat = render("risk_change", "email_text", "de", context("risk_change", "de"))
    assert "48.000,00" in fiat.text and "$" in fiat.text


def test_unknown_kind_or_channel() -> None:
    with pytest.raises(ValueError):
        render("nope", "sms", "en", context("trust_change", "en"))
    with pytest.raises(ValueError):
        render("trust_change", "fax", "en", context("trust_change", "en"))


# -- GSM-7 / UCS-2 -------------------------------------------------------------------------------------


def test_gsm7_limits() -> None:
    assert segment("a" * 160).count == 1
    s = segment("a" * 161)
    assert s.count == 2 and [len(p) for p in s.parts] == [153, 8]
    # Extension characters cost two septets: 80 euro signs fill one SMS, 81 need two.
    assert segment("€" * 80).count == 1 and segment("€" * 81).count == 2
    # An escape pair is never split: 152 'a' + '€' does not fit the first 153-septet part.
    parts = segment("a" * 152 + "€" + "a" * 10).parts
    assert parts[0] == "a" * 152 and parts[1].startswith("€")
    assert segment("Grüße aus München: Ä Ö Ü ß").encoding == "GSM-7"


def test_ucs2_fallback() -> None:
    assert segment("ą" * 70).encoding == "UCS-2" and segment("ą" * 70).count == 1
    s = segment("ą" * 71)
    assert s.count == 2 and [len(p) for p in s.parts] == [67, 4]
    emoji = segment("🚨" * 34)  # surrogate pairs: 68 units, one SMS
    assert emoji.units == 68 and emoji.count == 1
    assert all(len(p.encode("utf-16-le")) // 2 <= 67 for p in segment("🚨" * 40).parts)
    assert to_gsm_friendly("1\u202f234\u00a0ETH \u2192 \u201cok\u201d") == '1 234 ETH -> "ok"'


def _units(part: str, encoding: str) -> int:
    if encoding == "GSM-7":
        return sum(2 if ch in "\f^{}\\[~]|€" else 1 for ch in part)
    return len(part.encode("utf-16-le")) // 2


@given(st.text(max_size=500))
def test_segments_reassemble(text: str) -> None:
    s = segment(text)
    assert "".join(s.parts) == text
    single, per_part = (160, 153) if s.encoding == "GSM-7" else (70, 67)
    assert s.units == _units(text, s.encoding)
    if s.units <= single:
        assert s.count <= 1
    else:
        assert all(_units(p, s.encoding) <= per_part for p in s.parts)


# -- digests ----------------------------------------------------------------------------------------------

DIGEST_CHANNELS = ("in_app", "email_html", "email_text", "sms", "push", "webhook")


DIGEST_TITLES_DE = {
    "Floor price of Bored Ape Yacht Club fell 12.0%": "Mindestpreis von Bored Ape Yacht Club fiel um 12,0 %",
    "Floor price of Bored Ape Yacht Club fell 8.5%": "Mindestpreis von Bored Ape Yacht Club fiel um 8,5 %",
    "Trust score of CryptoPunk #7 fell to 45": "Vertrauenswert von CryptoPunk #7 fiel auf 45",
    "Price estimate of Token #1234 rose 5.0%": "Preisschätzung von Token #1234 stieg um 5,0 %",
}


def digest_context(locale: str) -> dict[str, Any]:
    """Three groups over two kinds (price moves twice, a trust change), spanning the DST switch."""

    def item(title: str, severity: str, minutes: int) -> dict[str, Any]:
        # Titles are stored rendered in the user's language when the notification is created.
        title = DIGEST_TITLES_DE.get(title, title) if locale == "de" else title
        return {"title": title, "severity": severity, "at": DATA_AT + timedelta(minutes=minutes)}

    return {
        "digest_key": "dgst_golden",
        "reason": "schedule",
        "timezone": TZ[locale],
        "user_name": "Ada" if locale == "en" else "Grete",
        "generated_at": DETECTED_AT + timedelta(hours=6),
        "groups": [
            {
                "kind": "price_movement",
                "entity_key": "collection:ethereum:0xbc4c",
                "entity_name": "Bored Ape Yacht Club",
                "entity_url": "https://pulse.example/e/collection:ethereum:0xbc4c",
                "severity": "warning",
                "items": [
                    item("Floor price of Bored Ape Yacht Club fell 12.0%", "warning", 0),
                    item("Floor price of Bored Ape Yacht Club fell 8.5%", "info", 95),
                ],
            },
            {
                "kind": "trust_change",
                "entity_key": "nft:ethereum:0x1a92:7",
                "entity_name": "CryptoPunk #7",
                "entity_url": "https://pulse.example/e/nft:ethereum:0x1a92:7",
                "severity": "info",
                "items": [item("Trust score of CryptoPunk #7 fell to 45", "info", 30)],
            },
            {
                "kind": "price_movement",
                "entity_key": "nft:ethereum:0xbc4c:1234",
                "entity_name": "Token #1234",
                "entity_url": "https://pulse.example/e/nft:ethereum:0xbc4c:1234",
                "severity": "info",
                "items": [item("Price estimate of Token #1234 rose 5.0%", "info", 200)],
            },
        ],
        "inbox_url": "https://pulse.example/inbox",
        "preferences_url": "https://pulse.example/settings/notifications",
    }


DIGEST_CASES = [(c, loc) for c in DIGEST_CHANNELS for loc in LOCALES]


@pytest.mark.parametrize(("channel", "locale"), DIGEST_CASES, ids=["-".join(c) for c in DIGEST_CASES])
def test_digest_golden(channel: str, locale: str) -> None:
    got = serialise(render_digest(channel, locale, digest_context(locale)))
    path = GOLDEN / f"digest.{channel}.{locale}.{EXT.get(channel, 'txt')}"
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"golden file {path.name} missing; run with PULSE_UPDATE_GOLDEN=1 to create it")
        path.write_text(got, encoding="utf-8")
    assert got == path.read_text(encoding="utf-8"), f"{path.name} differs; PULSE_UPDATE_GOLDEN=1 regenerates"


def test_digest_groups_by_kind_then_entity() -> None:
    text = render_digest("email_text", "en", digest_context("en")).text
    # Both price groups sit under one heading, before the trust section (the loudest group's kind).
    assert text.index("Price moves") < text.index("Bored Ape Yacht Club -") < text.index("Token #1234 -")
    assert text.index("Token #1234 -") < text.index("Trust changes") < text.index("CryptoPunk #7 -")
    assert text.count("Price moves") == 1
    hook = render_digest("webhook", "de", digest_context("de")).data
    assert hook is not None
    assert [s["kind"] for s in hook["sections"]] == ["price_movement", "trust_change"]
    assert hook["items"] == 4 and hook["groups"][0]["items"][0]["at"] == "2025-03-30T00:55:00+00:00"


@pytest.mark.parametrize("locale", LOCALES)
def test_digest_sms_fits_one_segment_and_html_escapes(locale: str) -> None:
    ctx = digest_context(locale)
    sms = render_digest("sms", locale, ctx)
    assert sms.sms is not None and sms.sms.encoding == "GSM-7" and sms.sms.count == 1, sms.text
    hostile = {**ctx, "groups": [{**ctx["groups"][0], "entity_name": "<img src=x> & Co"}]}
    html = render_digest("email_html", locale, hostile).html
    assert html is not None and "<img" not in html and "&lt;img src=x&gt; &amp; Co" in html


def test_digest_needs_groups_and_a_known_channel() -> None:
    with pytest.raises(ValueError):
        render_digest("fax", "en", digest_context("en"))
    with pytest.raises(ValueError):
        render_digest("sms", "en", {**digest_context("en"), "groups": []})
