"""What the users whose rules fired hold in what fired: the positions (and their value in ETH) that rank
their notifications by exposure (``domain.exposure``)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlmodel import Session

from nftpulse.domain.exposure import (
    REFERENCE_CURRENCY,
    Position,
    collection_position,
    nft_position,
    reference_value,
)
from nftpulse.store import watching


def positions(
    s: Session, fired: dict[str, list[str]], facts: dict[str, watching.EntityFacts], at: datetime
) -> dict[tuple[str, str], tuple[Position | None, Decimal]]:
    """The position (and its value in ETH) each firing user holds in each entity that fired for them
    (``fired``: user → entity keys; ``facts``: those entities' read-model fields).

    Only users with firings are looked at: their portfolio wallets (one query), the tokens those wallets
    hold in fired collections (one grouped query, only when a collection fired for a user with wallets)
    and the rates of non-ETH positions.
    """
    if not fired:
        return {}
    wallets = watching.portfolio_wallets(s, fired)
    wanted_collections = {
        key
        for user_id, keys in fired.items()
        if wallets.get(user_id)
        for key in keys
        if key.startswith("collection:")
    }
    every_wallet = {w for ws in wallets.values() for w in ws}
    counts = watching.held_counts(s, wanted_collections, every_wallet) if wanted_collections else {}
    out: dict[tuple[str, str], Position | None] = {}
    for user_id, keys in fired.items():
        mine = wallets.get(user_id) or set()
        for key in keys:
            fact = facts.get(key)
            if not mine or fact is None or (user_id, key) in out:
                continue
            if fact.kind == "nft":
                position = nft_position(
                    key, fact.owner, mine, fact.price_estimate, fact.last_sale, fact.currency
                )
            else:
                held = sum(counts.get((key, w), 0) for w in mine)
                position = collection_position(key, held, fact.floor, fact.currency)
            out[(user_id, key)] = position
    currencies = {p.currency for p in out.values() if p is not None}
    rates = (
        watching.rates_to(s, currencies, REFERENCE_CURRENCY, at) if currencies - {REFERENCE_CURRENCY} else {}
    )
    return {k: (p, reference_value(p, rates)) for k, p in out.items()}
