"""What detection reads and writes besides notifications: who watches which entity (through
``notify_subscription_keys`` and the watch generation detection's cache follows), the users and
subscriptions whose rules fired, rule state, and the read-model facts that match portfolios and value
a user's exposure. Subscription changes go through :func:`replace_subscription_keys`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Text, cast, delete, func, select, update
from sqlmodel import Session, col

from nftpulse.domain.book import derive
from nftpulse.store.models import EntityView, Rate
from nftpulse.store.notify import (
    NotifyUser,
    RuleStateRecord,
    Subscription,
    SubscriptionKey,
    WatchGeneration,
)
from nftpulse.store.sql import insert_many, one_of, table_of, upsert_insert


@dataclass(frozen=True)
class WatchEntry:
    """A subscription watching one changed entity: ids and rules only."""

    entity_key: str
    subscription_id: str
    user_id: str
    #: The rules as their stored JSON text: watchers of a busy entity mostly share a few definitions,
    #: which the caller parses once each (decoding every row's JSON cost more than the query).
    rules_json: str
    #: nft, collection, creator, wallet or portfolio: a wallet's activity notifies wallet watches only.
    target: str = ""


def watch_generation(session: Session) -> int:
    stmt = select(col(WatchGeneration.generation)).where(col(WatchGeneration.id) == 1)
    value = session.execute(stmt).scalar()
    return int(value or 0)


def bump_watch_generation(session: Session) -> None:
    stmt = upsert_insert(session)(WatchGeneration).values(id=1, generation=1)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["id"], set_={"generation": col(WatchGeneration.generation) + 1}
        )
    )


def disable_subscriptions(session: Session, reasons: dict[str, str], at: datetime) -> int:
    """Disable subscriptions whose rules failed in detection (``reasons``: subscription id -> why); the
    first reason stands. Moves the watch generation, so that detection's cache drops them. Returns how many
    were newly disabled."""
    if not reasons:
        return 0
    changed = 0
    for sub_id, reason in sorted(reasons.items()):
        result = session.execute(
            update(Subscription)
            .where(col(Subscription.id) == sub_id, col(Subscription.disabled_at).is_(None))
            .values(disabled_at=at, disabled_reason=reason[:500])
        )
        changed += int(getattr(result, "rowcount", 0) or 0)
    if changed:
        bump_watch_generation(session)
    return changed


def disabled_subscriptions(session: Session, limit: int, offset: int) -> list[Subscription]:
    """Subscriptions disabled by a failing rule, most recently disabled first (the ops failures list)."""
    stmt = (
        select(Subscription)
        .where(col(Subscription.disabled_at).is_not(None))
        .order_by(col(Subscription.disabled_at).desc(), col(Subscription.id))
        .limit(limit)
        .offset(offset)
    )
    return list(session.execute(stmt).scalars())


def wallets_watched(session: Session) -> bool:
    """Whether any subscription watches a wallet (its own or a portfolio's): one probe of the key index."""
    probe = (
        select(col(SubscriptionKey.entity_key))
        .where(col(SubscriptionKey.entity_key) >= "wallet:", col(SubscriptionKey.entity_key) < "wallet;")
        .limit(1)
    )
    return session.execute(probe).first() is not None


def creators_watched(session: Session) -> bool:
    """Whether any subscription watches a creator: one probe of the key index."""
    probe = (
        select(col(SubscriptionKey.entity_key))
        .where(col(SubscriptionKey.entity_key) >= "creator:", col(SubscriptionKey.entity_key) < "creator;")
        .limit(1)
    )
    return session.execute(probe).first() is not None


def watch_entries(session: Session, entity_keys: Iterable[str]) -> list[WatchEntry]:
    """Who watches any of ``entity_keys`` and with which rules, by user then subscription.

    Plain columns, no objects: a busy collection has hundreds of watchers, and only the few whose rules
    fire need their user and subscription loaded (``users_to_update``, ``subscriptions_by_id``).
    """
    keys = sorted(set(entity_keys))
    out: list[WatchEntry] = []
    for start in range(0, len(keys), 500):
        # (entity key, subscription id, user id, rules as JSON text, target): column types are not inferred.
        rows: Sequence[Any] = session.execute(
            select(
                col(SubscriptionKey.entity_key),
                col(Subscription.id),
                col(Subscription.user_id),
                cast(col(Subscription.rules), Text),
                col(Subscription.target),
            )
            .join(Subscription, col(Subscription.id) == col(SubscriptionKey.subscription_id))
            .where(one_of(session, col(SubscriptionKey.entity_key), keys[start : start + 500]))
            .where(col(Subscription.disabled_at).is_(None))
        ).all()
        out += [
            WatchEntry(key, sub_id, user_id, rules, target) for key, sub_id, user_id, rules, target in rows
        ]
    return sorted(out, key=lambda w: (w.user_id, w.subscription_id, w.entity_key))


def users_to_update(session: Session, user_ids: Iterable[str], *, lock: bool) -> dict[str, NotifyUser]:
    """The users whose budget a detection is about to change; ``lock`` takes their row locks (Postgres) so
    that two detections for one user serialise instead of losing an update, and reads them afresh."""
    ids = sorted(set(user_ids))
    if not ids:
        return {}
    stmt = select(NotifyUser).where(one_of(session, col(NotifyUser.id), ids)).order_by(col(NotifyUser.id))
    if lock:
        stmt = stmt.with_for_update()
    rows: Iterable[NotifyUser] = session.execute(stmt.execution_options(populate_existing=True)).scalars()
    return {user.id: user for user in rows}


def subscriptions_by_id(session: Session, ids: Iterable[str]) -> dict[str, Subscription]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows: Iterable[Subscription] = session.execute(
        select(Subscription).where(one_of(session, col(Subscription.id), wanted))
    ).scalars()
    return {sub.id: sub for sub in rows}


def rule_states(session: Session, triples: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str, str], str]:
    """Stored rule states (``RuleState.to_dict()`` as JSON text) by (subscription, rule, entity) for the
    given triples. Text, not decoded: a batch reads thousands, most of them equal, and the caller decodes
    each distinct one once."""
    wanted = set(triples)
    if not wanted:
        return {}
    subs = sorted({t[0] for t in wanted})
    rows: Iterable[Any] = session.execute(
        select(
            col(RuleStateRecord.subscription_id),
            col(RuleStateRecord.rule_id),
            col(RuleStateRecord.entity_key),
            cast(col(RuleStateRecord.state), Text),
        ).where(one_of(session, col(RuleStateRecord.subscription_id), subs))
    )
    return {(sub, rule, entity): state for sub, rule, entity, state in rows if (sub, rule, entity) in wanted}


def save_rule_states(session: Session, states: dict[tuple[str, str, str], Any], at: datetime) -> None:
    """Store rule states by (subscription, rule, entity): one upsert for all of them. A state is its dict
    or, encoded once for the many watchers that share it, an ``orjson.Fragment``."""
    if not states:
        return

    def upsert(stmt: Any) -> Any:
        return stmt.on_conflict_do_update(
            index_elements=["subscription_id", "rule_id", "entity_key"],
            set_={"state": stmt.excluded.state, "updated_at": stmt.excluded.updated_at},
        )

    rows = [
        {"subscription_id": sub, "rule_id": rule, "entity_key": entity, "state": state, "updated_at": at}
        for (sub, rule, entity), state in states.items()
    ]
    insert_many(session, table_of(RuleStateRecord), rows, upsert)


def replace_subscription_keys(session: Session, subscription_id: str, keys: Iterable[str]) -> None:
    """Make the index rows of a subscription exactly ``keys``. Every change of a subscription (create,
    update, delete) goes through here, and so moves the watch generation."""
    bump_watch_generation(session)
    session.execute(delete(SubscriptionKey).where(col(SubscriptionKey.subscription_id) == subscription_id))
    for key in sorted(set(keys)):
        session.add(SubscriptionKey(entity_key=key, subscription_id=subscription_id))


def delete_subscription(session: Session, subscription_id: str) -> None:
    """Remove a subscription, its index rows and its rule state."""
    replace_subscription_keys(session, subscription_id, [])
    session.execute(delete(RuleStateRecord).where(col(RuleStateRecord.subscription_id) == subscription_id))
    session.execute(delete(Subscription).where(col(Subscription.id) == subscription_id))


# -- holdings: what detection needs to match portfolios and value the user's exposure ---------------------


@dataclass(frozen=True)
class EntityFacts:
    """The few read-model fields detection needs of one changed NFT or collection."""

    key: str
    kind: str
    collection_key: str
    #: NFT: current owner (lower case), price estimate, last sale price and their currency.
    owner: str | None = None
    price_estimate: str | None = None
    last_sale: str | None = None
    #: Collection: floor and quote currency.
    floor: str | None = None
    currency: str | None = None
    #: Collection: its creator's address (lower case), where an event named it.
    creator: str | None = None


def _view_text(*path: str) -> Any:
    view = table_of(EntityView).c.view
    return view[path if len(path) > 1 else path[0]].as_string()


def _view_json(name: str) -> Any:
    return table_of(EntityView).c.view[name]


def entity_facts(session: Session, keys: Iterable[str]) -> dict[str, EntityFacts]:
    """Owner and value fields of the given NFT and collection read models: one query on the primary key,
    reading only those JSON fields (a batch may change thousands of NFTs), and one more for the factors of
    the collections whose NFTs' price estimates are derived from them (``domain.book.derive``)."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    stmt = select(
        col(EntityView.key),
        col(EntityView.kind),
        col(EntityView.collection_key),
        _view_text("owner"),
        _view_text("price_estimate", "value"),
        _view_text("price_estimate", "currency"),
        _view_text("last_sale", "price"),
        _view_text("last_sale", "currency"),
        _view_text("floor"),
        _view_text("currency"),
        _view_text("creator"),
        _view_json("traits"),
        _view_json(derive.INPUTS),
    ).where(one_of(session, col(EntityView.key), wanted))
    rows: list[Any] = list(session.execute(stmt).all())
    parts = {row[0]: {"traits": row[11], derive.INPUTS: row[12]} for row in rows if row[12] is not None}
    factors = _factors(session, {row[2] for row in rows if row[0] in parts})
    out: dict[str, EntityFacts] = {}
    for key, kind, coll, owner, estimate, est_ccy, sale, sale_ccy, floor, ccy, creator, _, _ in rows:
        if key in parts and coll in factors:
            derived = derive.price_estimate(parts[key], factors[coll])
            estimate, est_ccy = derived["value"], derived["currency"]
        out[key] = EntityFacts(
            key=key,
            kind=kind,
            collection_key=coll,
            owner=owner.lower() if owner else None,
            price_estimate=estimate,
            last_sale=sale,
            floor=floor,
            currency=ccy or est_ccy or sale_ccy,
            creator=creator.lower() if creator else None,
        )
    return out


def _factors(session: Session, collection_keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The factors NFT views of these collections derive from, by collection key."""
    wanted = sorted(set(collection_keys))
    if not wanted:
        return {}
    stmt = select(col(EntityView.key), _view_json(derive.FACTORS)).where(
        one_of(session, col(EntityView.key), wanted)
    )
    rows: list[Any] = list(session.execute(stmt).all())
    return {key: value for key, value in rows if value is not None}


def portfolio_wallets(session: Session, user_ids: Iterable[str]) -> dict[str, set[str]]:
    """The wallets each user declared as their own (portfolio subscriptions), through the user index."""
    users = sorted(set(user_ids))
    out: dict[str, set[str]] = {u: set() for u in users}
    if not users:
        return out
    rows: list[Any] = list(
        session.execute(
            select(col(Subscription.user_id), col(Subscription.wallets)).where(
                one_of(session, col(Subscription.user_id), users), col(Subscription.target) == "portfolio"
            )
        ).all()
    )
    for user_id, wallets in rows:
        out[user_id].update(str(w).lower() for w in wallets or [])
    return out


def held_counts(
    session: Session, collection_keys: Iterable[str], wallets: Iterable[str]
) -> dict[tuple[str, str], int]:
    """Tokens per (collection, owner) for the given collections and wallets: one grouped query over the
    collections' NFT read models (indexed by collection)."""
    colls, owners = sorted(set(collection_keys)), sorted({w.lower() for w in wallets})
    if not colls or not owners:
        return {}
    owner = _view_text("owner")
    rows: list[Any] = list(
        session.execute(
            select(col(EntityView.collection_key), owner, func.count())
            .where(
                one_of(session, col(EntityView.collection_key), colls),
                col(EntityView.kind) == "nft",
                one_of(session, owner, owners),
            )
            .group_by(col(EntityView.collection_key), owner)
        ).all()
    )
    return {(str(coll), str(w)): int(n) for coll, w, n in rows}


def rates_to(session: Session, currencies: Iterable[str], quote: str, at: datetime) -> dict[str, Decimal]:
    """The latest rate at or before ``at`` from each currency to ``quote`` (price ticks), where known."""
    out: dict[str, Decimal] = {}
    for base in sorted({c.upper() for c in currencies} - {quote}):
        row = session.execute(
            select(col(Rate.rate))
            .where(col(Rate.base) == base, col(Rate.quote) == quote, col(Rate.at) <= at)
            .order_by(col(Rate.at).desc())
            .limit(1)
        ).scalar_one_or_none()
        if row is not None:
            out[base] = Decimal(row)
    return out
