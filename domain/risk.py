"""Risk level (low / medium / high / critical) with its reasons, per collection and per NFT. Pure.

Collection: the highest of open collection-wide fraud findings (their severity), serious findings
about its tokens or wallets (medium), the trust score (below 25: high, below 50: medium), the wash
share (from 50%: high, from 20%: medium) and a market anomaly (medium). NFT: the highest of its
collection's level and its own: findings about the token or its current owner (their severity) and
its own wash-flagged sales (from 50% of its volume: high, any: medium).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from nftpulse.domain.trust import Finding

LEVELS = ("low", "medium", "high", "critical")


def worst(*levels: str) -> str:
    """The most severe of ``levels`` (low when none)."""
    return max(levels, key=LEVELS.index, default="low")


def _reason(code: str, level: str, detail: str) -> dict[str, str]:
    return {"code": code, "level": level, "detail": detail}


def collection_risk(
    *, findings: Iterable[Finding], trust: float, wash_share: float, anomaly: bool
) -> dict[str, Any]:
    """``{level, reasons}`` for a collection."""
    reasons: list[dict[str, str]] = []
    for f in sorted(findings, key=lambda f: f.finding_id):
        if not f.open:
            continue
        if f.token_id is None and not f.wallets:
            reasons.append(
                _reason("fraud_finding", f.severity, f"open {f.severity} {f.kind} finding {f.finding_id}")
            )
        elif f.severity in ("high", "critical"):
            reasons.append(
                _reason(
                    "token_fraud_finding",
                    "medium",
                    f"open {f.severity} {f.kind} finding {f.finding_id} on a token",
                )
            )
    if trust < 25:
        reasons.append(_reason("low_trust", "high", "trust score below 25"))
    elif trust < 50:
        reasons.append(_reason("low_trust", "medium", "trust score below 50"))
    if wash_share >= 0.5:
        reasons.append(_reason("wash_trading", "high", "half or more of the volume is wash-flagged"))
    elif wash_share >= 0.2:
        reasons.append(_reason("wash_trading", "medium", "a fifth or more of the volume is wash-flagged"))
    if anomaly:
        reasons.append(_reason("market_anomaly", "medium", "floor or volume is a statistical outlier"))
    return {"level": worst(*(r["level"] for r in reasons)), "reasons": reasons}


def nft_risk(
    *, collection: dict[str, Any], findings: Iterable[Finding], token_wash_share: float
) -> dict[str, Any]:
    """``{level, reasons}`` for an NFT given its collection's risk and what concerns the token itself."""
    reasons: list[dict[str, str]] = []
    for f in sorted(findings, key=lambda f: f.finding_id):
        if f.open:
            reasons.append(
                _reason("fraud_finding", f.severity, f"open {f.severity} {f.kind} finding {f.finding_id}")
            )
    if token_wash_share >= 0.5:
        reasons.append(_reason("wash_trading", "high", "half or more of its volume is wash-flagged"))
    elif token_wash_share > 0:
        reasons.append(_reason("wash_trading", "medium", "some of its sales are wash-flagged"))
    if collection["level"] != "low":
        reasons.append(
            _reason("collection", collection["level"], f"collection risk is {collection['level']}")
        )
    return {"level": worst(*(r["level"] for r in reasons)), "reasons": reasons}


def nft_risk_level(
    *, collection: dict[str, Any], findings: Iterable[Finding], token_wash_share: float
) -> str:
    """``nft_risk(...)["level"]`` without building the reasons: what a change comparison needs."""
    levels: list[str] = []
    for f in findings:
        if f.open:
            if f.severity == LEVELS[-1]:
                return f.severity  # nothing is worse: the owner's other findings need not be read
            levels.append(f.severity)
    if token_wash_share >= 0.5:
        levels.append("high")
    elif token_wash_share > 0:
        levels.append("medium")
    if collection["level"] != "low":
        levels.append(collection["level"])
    return worst(*levels)
