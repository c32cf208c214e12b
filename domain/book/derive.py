"""An NFT's read model derived from two stored parts: the token's own part and its collection's factors.

Trust, risk and the price estimate of every NFT follow collection figures (the collection's trust and
risk level, floor, time-weighted floor, day, collection and trait offers). Stored whole, one collection-wide
move (a fraud finding, a floor move) would rewrite every NFT row of the collection: 10,000 rows for one
event in a big collection. So an NFT's stored row holds what is the token's own (:data:`PARTS` and
``inputs``: its wash share, open findings, rarity score, last clean sale, own best offer), the
collection's row holds the factors (``nft_factors``), and the view is derived from both when read.

The book's own ``nft_view`` is this same derivation over parts and factors it builds in memory, so a read
of the stored rows is exactly the book's view as of the rows' last writes. Pure; JSON in, JSON out.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from decimal import Decimal
from typing import Any

from nftpulse.domain import price as price_engine
from nftpulse.domain import risk as risk_engine
from nftpulse.domain import trust as trust_engine
from nftpulse.domain.rarity import canonical_traits
from nftpulse.domain.trust import Finding, TrustResult

#: The fields of an NFT's stored part served as they are.
PARTS = (
    "chain",
    "contract",
    "token_id",
    "owner",
    "burned",
    "traits",
    "last_sale",
    "active_listing",
    "rarity",
)
#: The key of the stored part's derivation inputs and of the collection row's factors.
INPUTS = "inputs"
FACTORS = "nft_factors"
#: Scope ranks when offers of different scopes bid the same: the most specific wins.
_SCOPE_RANK = {"token": 2, "trait": 1, "collection": 0}


def is_part(stored: dict[str, Any]) -> bool:
    """Whether a stored NFT row is a part (to derive from) rather than a whole view."""
    return INPUTS in stored


def _decimal(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _findings(inputs: dict[str, Any]) -> list[Finding]:
    # Only open findings are stored: closed ones count for nothing in trust or risk.
    return [
        Finding(finding_id, (0, 0, ""), kind, severity, "open")
        for finding_id, kind, severity in inputs["findings"]
    ]


def best_of(offers: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, Any] | None:
    """The highest of ``(bidder, offer)`` pairs; ties go to the earlier (chain order), then the bidder, so
    any fold order picks the same."""
    best: tuple[Decimal, tuple[Any, ...], str] | None = None
    found = None
    for bidder, offer in offers:
        rank = (-Decimal(offer["price"]), tuple(offer["key"]), bidder)
        if best is None or rank < best:
            best, found = rank, offer
    return found


def choose_offer(
    own: dict[str, Any] | None,
    traits: dict[str, Any] | None,
    standing: Collection[tuple[str, dict[str, Any]]],
    collection: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """The highest standing offer that would buy a token: its own best, the best trait offer its
    ``traits`` meet (None: the token is unknown, no trait offer applies), or the best collection offer
    (``scope`` says which); None when none stands."""
    trait = None
    if traits is not None and standing:
        canonical = canonical_traits(traits)
        trait = best_of(
            (k, o) for k, o in standing if canonical.get(o["trait"]["type"]) == o["trait"]["value"]
        )
    candidates = [(own, "token"), (trait, "trait"), (collection, "collection")]
    pick = [(o, scope) for o, scope in candidates if o is not None]
    if not pick:
        return None
    offer, scope = max(pick, key=lambda p: (Decimal(p[0]["price"]), _SCOPE_RANK[p[1]]))
    return {k: v for k, v in offer.items() if k != "key"} | {"scope": scope}


def best_offer(part: dict[str, Any], factors: dict[str, Any]) -> dict[str, Any] | None:
    """:func:`choose_offer` for a stored part and its collection's factors."""
    return choose_offer(
        part[INPUTS]["own_offer"], part["traits"], factors["trait_offers"], factors["collection_offer"]
    )


def price_estimate(
    part: dict[str, Any], factors: dict[str, Any], offer: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The token's price estimate (``offer``: its :func:`best_offer`, when already known)."""
    inputs = part[INPUTS]
    if offer is None:
        offer = best_offer(part, factors)
    clean = inputs["clean_sale"]
    day = factors["day"]
    params = factors["price_params"]
    return price_engine.estimate(
        best_offer=None if offer is None else Decimal(offer["price"]),
        floor=_decimal(factors["floor"]),
        twap=_decimal(factors["twap_floor"]),
        rarity_score=inputs["rarity_score"],
        last_sale=None if clean is None else Decimal(clean[0]),
        last_sale_age_days=None if clean is None or day is None else day - clean[1],
        currency=factors["currency"],
        params=price_engine.PriceParams(
            premium_rate=Decimal(params[0]),
            premium_cap=Decimal(params[1]),
            half_life_days=params[2],
            spread=Decimal(params[3]),
        ),
    )


def price_params_json(params: price_engine.PriceParams) -> list[Any]:
    """:class:`~domain.price.PriceParams` in the factors' form."""
    return [str(params.premium_rate), str(params.premium_cap), params.half_life_days, str(params.spread)]


def nft_view(part: dict[str, Any], factors: dict[str, Any]) -> dict[str, Any]:
    """The API's read model of one NFT from its stored part and its collection's factors."""
    inputs = part[INPUTS]
    findings = _findings(inputs)
    wash = inputs["wash_share"]
    # An NFT's trust and risk read only the collection's score and level, not their factors and reasons.
    collection_trust = TrustResult(factors["trust"])
    offer = best_offer(part, factors)
    view: dict[str, Any] = {key: part[key] for key in PARTS}
    view["best_offer"] = offer
    view["trust"] = trust_engine.nft_trust(collection_trust, wash, findings).view()
    view["price_estimate"] = price_estimate(part, factors, offer)
    view["risk"] = risk_engine.nft_risk(
        collection={"level": factors["risk"]}, findings=findings, token_wash_share=wash
    )
    if "balances" in part:
        view["balances"] = part["balances"]
    return view
