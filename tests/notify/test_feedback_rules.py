"""The adaptation rule (``domain.feedback``), learned send times (``domain.sendtime``) and the templates that
carry feedback links and an adapted rule's notice on every channel."""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from nftpulse.domain.feedback import (
    MAX_FACTOR,
    MAX_STEP,
    RuleAdaptation,
    adapted_rule,
    dominant_reason,
    factor,
    mode_for,
    next_step,
    notice,
)
from nftpulse.domain.routing import QuietHours
from nftpulse.domain.rules import Rule
from nftpulse.domain.sendtime import add_read, best_hour, digest_schedule, next_send_at
from nftpulse.templates.renderer import CHANNELS, LOCALES, render

FLOOR_20 = {"id": "floor-20", "kind": "relative_change", "metric": "floor", "pct": 0.2, "rearm_pct": 0.1}


# -- the adaptation rule -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verdicts", "step", "expected"),
    [
        (["not_useful", "too_many", "not_useful"], 0, 1),  # 3 of the last 5 negative
        (["not_useful", "useful", "too_many", "useful", "not_useful"], 1, 2),
        (["not_useful", "useful", "useful", "too_many", "useful"], 0, 0),  # 2 of 5: stays
        (["not_useful", "not_useful"], 0, 0),  # too few
        (["useful", "not_useful", "useful", "not_useful", "useful", "not_useful"], 0, 0),  # window of 5
        (["not_useful"] * 5, MAX_STEP, MAX_STEP),  # bounded
        (["useful"] * 5, 2, 1),  # five useful in a row step back
        (["useful"] * 4, 2, 2),
        (["useful"] * 5, 0, 0),  # never past the user's own setting
    ],
)
def test_next_step(verdicts: list[str], step: int, expected: int) -> None:
    assert next_step(verdicts, step) == expected


def test_factor_widens_by_half_per_step_and_stops_at_four() -> None:
    assert [factor(s) for s in range(MAX_STEP + 2)] == [1.0, 1.5, 2.25, 3.375, 4.0, 4.0]
    assert max(factor(s) for s in range(20)) == MAX_FACTOR


def test_relative_change_widens_its_pct_within_bounds() -> None:
    pcts = [adapted_rule(FLOOR_20, step, "widen")["pct"] for step in range(MAX_STEP + 1)]
    assert pcts == pytest.approx([0.2, 0.3, 0.45, 0.675, 0.8])
    widened = Rule.model_validate(adapted_rule(FLOOR_20, 1, "widen"))
    assert widened.rearm_pct == pytest.approx(0.15) and widened.id == "floor-20"


def test_anomaly_widens_z_and_others_go_to_the_digest_or_cool_down() -> None:
    anomaly = {"id": "a", "kind": "anomaly", "metric": "volume", "z": 3.5}
    assert adapted_rule(anomaly, 2, "widen")["z"] == pytest.approx(7.875)
    threshold = Rule.model_validate({"id": "t", "kind": "threshold", "metric": "trust", "level": "50"})
    assert mode_for(threshold, has_digest=True) == "digest"
    assert mode_for(threshold, has_digest=False) == "cooldown"
    assert mode_for(Rule.model_validate(FLOOR_20), has_digest=True) == "widen"
    raw = threshold.model_dump(mode="json")
    assert adapted_rule(raw, 3, "digest") == raw  # the rule stays; its firings are routed
    assert adapted_rule({**raw, "cooldown_s": 600}, 1, "cooldown")["cooldown_s"] == 5400  # from an hour


def test_reason_and_notice() -> None:
    assert dominant_reason(["too_many", "too_many", "not_useful"]) == "too_many"
    assert dominant_reason(["not_useful", "too_many", "not_useful", "useful"]) == "not_useful"
    assert dominant_reason(["useful"] * 5) == "useful"
    state = RuleAdaptation(step=1, mode="widen", reason="not_useful", announce=True)
    n = notice(FLOOR_20, adapted_rule(FLOOR_20, 1, "widen"), state, settings_url="https://x/s")
    assert (n.parameter, n.original, n.current, n.factor) == ("pct", 0.2, pytest.approx(0.3), 1.5)


# -- learned send times --------------------------------------------------------------------------------------


def test_best_hour_needs_enough_reads_then_takes_the_most_read_hour() -> None:
    hours: list[int] = []
    berlin_21 = datetime(2026, 6, 1, 19, 15, tzinfo=UTC)  # 21:15 in Berlin (summer time)
    for _ in range(3):
        hours = add_read(hours, berlin_21, "Europe/Berlin")
    assert hours[21] == 3 and sum(hours) == 3
    assert best_hour(hours, default_hour=9, min_reads=5) == 9  # cold start
    hours = add_read(
        add_read(hours, berlin_21, "Europe/Berlin"), datetime(2026, 6, 1, 6, tzinfo=UTC), "Europe/Berlin"
    )
    assert best_hour(hours, default_hour=9, min_reads=5) == 21


def test_next_send_at_the_hour_out_of_quiet_hours_and_across_dst() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    now = datetime(2026, 6, 1, 10, 30, tzinfo=berlin)
    assert next_send_at(now, 21, "Europe/Berlin") == datetime(2026, 6, 1, 21, 0, tzinfo=berlin)
    assert next_send_at(now, 9, "Europe/Berlin") == datetime(2026, 6, 2, 9, 0, tzinfo=berlin)
    assert next_send_at(now, 10, "Europe/Berlin") == now  # inside the hour: now
    quiet = QuietHours(start=time(20), end=time(7), tz="Europe/Berlin")
    assert next_send_at(now, 21, "Europe/Berlin", quiet) == datetime(2026, 6, 2, 7, 0, tzinfo=berlin)
    # The night the clocks go back: 09:00 local is still 09:00 local.
    autumn = datetime(2026, 10, 24, 12, 0, tzinfo=berlin)
    assert next_send_at(autumn, 9, "Europe/Berlin").astimezone(berlin).hour == 9
    assert digest_schedule({"frequency": "daily", "at": "08:00:00"}, 21)["at"] == "21:00:00"
    assert digest_schedule({"frequency": "hourly", "at": "00:15:00"}, 21)["at"] == "00:15:00"


# -- templates ----------------------------------------------------------------------------------------------


def _context(**extra: Any) -> dict[str, Any]:
    at = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
    return {
        "idempotency_key": "ntf_feedback",
        "severity": "warning",
        "timezone": "Europe/Berlin",
        "entity_key": "collection:ethereum:0x" + "ab" * 20,
        "entity_name": "Apes",
        "entity_url": "https://pulse.example/v1/collections/ethereum/0xab",
        "rule": {
            "id": "floor-20",
            "kind": "relative_change",
            "metric": "floor",
            "pct": 0.3,
            "window_s": 3600,
        },
        "metric": "floor",
        "before": "10",
        "after": "6.5",
        "change_pct": -0.35,
        "data_at": at,
        "detected_at": at,
        **extra,
    }


LINKS = {
    "useful": "https://pulse.example/v1/callbacks/feedback/7?token=t&via=email&verdict=useful",
    "not_useful": "https://pulse.example/v1/callbacks/feedback/7?token=t&via=email&verdict=not_useful",
    "too_many": "https://pulse.example/v1/callbacks/feedback/7?token=t&via=email&verdict=too_many",
    "url": "https://pulse.example/v1/callbacks/feedback/7?token=t&via=webhook",
}
NOTICE = {
    "rule_id": "floor-20",
    "step": 1,
    "mode": "widen",
    "reason": "not_useful",
    "parameter": "pct",
    "original": 0.2,
    "current": 0.3,
    "factor": 1.5,
    "reset_url": "https://pulse.example/v1/callbacks/feedback/7/reset?token=t",
}


@pytest.mark.parametrize("locale", LOCALES)
def test_every_channel_carries_the_feedback_links_and_the_notice(locale: str) -> None:
    ctx = _context(feedback=LINKS, adaptation=NOTICE)
    out = {channel: render("price_movement", channel, locale, ctx) for channel in CHANNELS}
    over = "30.0%" if locale == "en" else "30,0%"
    for channel in ("email_html", "email_text"):
        text = out[channel].html if channel == "email_html" else out[channel].text
        assert text is not None
        assert over in text and ("20.0%" if locale == "en" else "20,0%") in text, channel
        assert "reset?token=t" in text, channel
        for verdict in ("useful", "not_useful", "too_many"):
            assert LINKS[verdict].replace("&", "&amp;" if channel == "email_html" else "&") in text
    assert out["sms"].text.endswith(("Now alerting on moves over 30.0%.", "Jetzt erst ab 30,0%."))
    push = out["push"].data
    assert push is not None and [a["url"] for a in push["actions"]] == [
        LINKS[v] for v in ("useful", "not_useful", "too_many")
    ]
    assert over in push["body"]
    hook = out["webhook"].data
    assert hook is not None
    assert (
        hook["feedback"]["url"] == LINKS["url"] and hook["feedback"]["links"]["too_many"] == LINKS["too_many"]
    )
    assert hook["adaptation"]["current"] == 0.3 and hook["adaptation"]["original"] == 0.2
    assert over in hook["adaptation"]["text"]
    row = out["in_app"].data
    assert row is not None and over in row["body"] and row["feedback"]["useful"] == LINKS["useful"]
    if locale == "en":
        assert "We now alert you on moves over 30.0% (your setting: 20.0%)" in out["email_text"].text
        assert "because you marked recent alerts of this rule not useful" in out["email_text"].text


def test_without_links_or_notice_the_templates_say_nothing_of_them() -> None:
    out = render("price_movement", "webhook", "en", _context())
    assert out.data is not None and "feedback" not in out.data and "adaptation" not in out.data
    assert "useful" not in render("price_movement", "email_text", "en", _context()).text.lower()


def test_the_email_escapes_the_links() -> None:
    evil = dict(LINKS, useful='https://x/"><script>alert(1)</script>')
    html = render("price_movement", "email_html", "en", _context(feedback=evil)).html
    assert html is not None and "<script>" not in html
