"""Who watches what: the subscriptions watching each changed entity (kept in memory while nobody changes
a subscription), their rules parsed once per definition, and the keys a change is watched under."""

from __future__ import annotations

import threading
from collections.abc import Iterable

import orjson
from sqlmodel import Session

from nftpulse.domain.changes import MetricChange
from nftpulse.domain.events import creator_key, wallet_key
from nftpulse.domain.rules import FINDING_METRIC, Rule
from nftpulse.store import watching


class WatcherCache:
    """Who watches each entity (``watching.watch_entries``), kept in memory while the watch generation stands
    still: subscriptions change rarely, detection asks for thousands of entities per batch (most of them
    watched by nobody), and the query was a fifth of a busy worker's time. Every subscription change
    moves the generation in its own transaction (``watching.replace_subscription_keys``), and the generation
    is read before the watchers, so a detection never keeps watchers older than the generation it saw."""

    def __init__(self, max_keys: int = 200_000) -> None:
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._by_key: dict[str, tuple[watching.WatchEntry, ...]] = {}
        self._max = max_keys

    def lookup(self, session: Session, entity_keys: Iterable[str]) -> list[watching.WatchEntry]:
        """Like ``watching.watch_entries``: by user, then subscription, then entity."""
        keys = set(entity_keys)
        generation = watching.watch_generation(session)
        with self._lock:
            if generation != self._generation:
                self._by_key, self._generation = {}, generation
            known = {key: self._by_key[key] for key in keys if key in self._by_key}
        missing = keys - known.keys()
        if missing:
            loaded: dict[str, list[watching.WatchEntry]] = {key: [] for key in missing}
            for entry in watching.watch_entries(session, missing):
                loaded[entry.entity_key].append(entry)
            fresh = {key: tuple(entries) for key, entries in loaded.items()}
            with self._lock:
                if self._generation == generation:
                    if len(self._by_key) + len(fresh) > self._max:
                        self._by_key = {}
                    self._by_key.update(fresh)
            known.update(fresh)
        found = [entry for entries in known.values() for entry in entries]
        return sorted(found, key=lambda w: (w.user_id, w.subscription_id, w.entity_key))


def by_watched_key(
    changes: list[MetricChange], facts: dict[str, watching.EntityFacts]
) -> dict[str, list[MetricChange]]:
    """The changes under each key a subscription may watch: the changed entity's own, the wallets a
    change concerns (both sides of a transfer, the holder of a changed NFT), the creator of a changed
    collection (``facts``' creator), and for a fraud finding also its collection, its collection's
    creator and every wallet it names."""
    by_entity: dict[str, list[MetricChange]] = {}
    for ch in changes:
        keys = {ch.entity_key}
        wallets: set[str] = set()
        if ch.metric == "owner":
            # A transfer concerns the wallets on both sides: wallet and portfolio watchers.
            wallets |= {side.lower() for side in (ch.before, ch.after) if isinstance(side, str) and side}
        held = facts.get(ch.entity_key)
        if held is not None and held.owner:
            # Any change of a held NFT (trust, price estimate, risk …) concerns its holder's wallet.
            wallets.add(held.owner)
        if held is not None and held.kind == "collection" and held.creator:
            keys.add(creator_key(ch.entity_key.split(":")[1], held.creator))
        finding = ch.after if ch.metric == FINDING_METRIC and isinstance(ch.after, dict) else None
        if finding is not None:
            keys |= {k for k in (finding.get("collection"), finding.get("creator")) if isinstance(k, str)}
            wallets |= {w.lower() for w in finding.get("wallets") or () if isinstance(w, str)}
        keys |= {wallet_key(wallet) for wallet in wallets}
        for key in sorted(keys):
            by_entity.setdefault(key, []).append(ch)
    return by_entity


_RULES: dict[str, list[Rule]] = {}
_RULES_MAX = 100_000


def parsed_rules(rules_json: str) -> list[Rule]:
    """A subscription's rules (their stored JSON text), validated once per distinct definition: a busy
    collection's watchers are read for every batch, and validating each time was a tenth of detection.
    Rules are frozen, so the cached objects are safely shared."""
    rules = _RULES.get(rules_json)
    if rules is None:
        if len(_RULES) >= _RULES_MAX:
            _RULES.clear()
        rules = _RULES[rules_json] = [Rule.model_validate(item) for item in orjson.loads(rules_json)]
    return rules
