"""Wash rules, trust contributions, the price estimate and risk levels, by hand."""

from __future__ import annotations

from decimal import Decimal

import pytest

from nftpulse.domain.price import estimate
from nftpulse.domain.risk import collection_risk, nft_risk
from nftpulse.domain.trust import Finding, SaleRecord, collection_trust, nft_trust, wash_flags

DAY = 86_400_000_000
A, B, C, F = ("0x" + c * 40 for c in "abcf")


def sale(i: int, day: float, seller: str, buyer: str, **funders: str) -> SaleRecord:
    return SaleRecord(
        key=(i, 0, ""), uid=f"s{i}", at_us=int(day * DAY), token_id="1", seller=seller, buyer=buyer,
        price=Decimal(1), **funders,
    )  # fmt: skip


def test_wash_rules() -> None:
    assert wash_flags([sale(1, 0, A, A)]) == {"s1": ["self_trade"]}
    # A -> B -> A within 30 days: both legs
    assert wash_flags([sale(1, 0, A, B), sale(2, 29, B, A)]) == {"s1": ["round_trip"], "s2": ["round_trip"]}
    assert wash_flags([sale(1, 0, A, B), sale(2, 31, B, A)]) == {}
    # the same buyer three times within 30 days
    flags = wash_flags([sale(1, 0, C, B), sale(2, 10, A, B), sale(3, 20, C, B)])
    assert all("repeat_buyer" in rules for rules in flags.values()) and len(flags) == 3
    assert "repeat_buyer" not in str(wash_flags([sale(1, 0, C, B), sale(2, 20, A, B), sale(3, 40, C, B)]))
    assert wash_flags([sale(1, 0, A, B, buyer_funder=F, seller_funder=F)]) == {"s1": ["common_funder"]}
    assert wash_flags([sale(1, 0, A, B, buyer_funder=A)]) == {"s1": ["common_funder"]}


def test_trust_contributions_by_hand() -> None:
    findings = {"f1": Finding("f1", (1, 0, ""), "rug", "high", "open")}
    trust = collection_trust(
        wash_share=0.25, top10=0.5, gini_value=0.25, holders=5, supply=10, verified=None,
        findings=findings, age_days=90, clean_sales=9,
    )  # fmt: skip
    parts = {f["factor"]: f["contribution"] for f in trust.factors}
    assert parts["wash_trading"] == pytest.approx(22.5)  # 30 * (1 - 0.25)
    assert parts["holder_concentration"] == pytest.approx(12.0)  # 20 * (1 - (0.2 + 0.1 + 0.2 * 0.5))
    assert parts["creator_verification"] == pytest.approx(5.0)  # unknown: half of 10
    assert parts["fraud_findings"] == pytest.approx(10.0)  # 25 * (1 - 0.6)
    assert parts["age_and_history"] == pytest.approx(15 * (0.5 * 0.5 + 0.5 / 3))  # 6.25
    assert trust.score == pytest.approx(55.75)
    resolved = {"f1": Finding("f1", (2, 0, ""), "rug", "high", "resolved")}
    assert collection_trust(
        wash_share=0.25, top10=0.5, gini_value=0.25, holders=5, supply=10, verified=True,
        findings=resolved, age_days=90, clean_sales=9,
    ).score == pytest.approx(55.75 + 15 + 5)  # fmt: skip
    token = nft_trust(trust, 0.5, [Finding("f2", (1, 0, ""), "stolen", "critical", "open", token_id="1")])
    assert token.score == pytest.approx(0.6 * 55.75 + 10 + 0)
    assert sum(f["contribution"] for f in token.factors) == pytest.approx(token.score)


def test_price_estimate_by_hand() -> None:
    # anchor (1 + 1.2) / 2 = 1.1; score 1.5 -> premium 1.1 * 0.5 * 0.5 = 0.275; base 1.375
    est = estimate(floor=Decimal(1), twap=Decimal("1.2"), rarity_score=1.5, last_sale=None,
                   last_sale_age_days=None, currency="ETH")  # fmt: skip
    assert est == {"value": "1.37500000", "low": "1.00000000", "high": "1.37500000", "currency": "ETH"}
    # a clean sale at 2, 14 days old (one half-life): 0.5 * 2 + 0.5 * 1.375 = 1.6875
    est = estimate(floor=Decimal(1), twap=Decimal("1.2"), rarity_score=1.5, last_sale=Decimal(2),
                   last_sale_age_days=14, currency="ETH")  # fmt: skip
    assert est["value"] == "1.68750000" and est["high"] == "2.00000000"
    assert estimate(floor=None, twap=None, rarity_score=None, last_sale=None, last_sale_age_days=None,
                    currency="ETH")["value"] is None  # fmt: skip


def test_risk_levels() -> None:
    critical = [Finding("f", (1, 0, ""), "rug", "critical", "open")]
    assert collection_risk(findings=critical, trust=90, wash_share=0, anomaly=False)["level"] == "critical"
    assert collection_risk(findings=[], trust=40, wash_share=0, anomaly=False)["level"] == "medium"
    assert collection_risk(findings=[], trust=90, wash_share=0.6, anomaly=False)["level"] == "high"
    calm = collection_risk(findings=[], trust=90, wash_share=0, anomaly=False)
    assert calm == {"level": "low", "reasons": []}
    assert collection_risk(findings=[], trust=90, wash_share=0, anomaly=True)["level"] == "medium"
    stolen = [Finding("s", (1, 0, ""), "stolen", "high", "open", token_id="1")]
    nft = nft_risk(collection=calm, findings=stolen, token_wash_share=0)
    assert nft["level"] == "high" and nft["reasons"][0]["code"] == "fraud_finding"
