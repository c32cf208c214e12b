"""A collection book's JSON form: its facts (``core_dict``) and its grow-only history (sales and listing
entries), whole or in parts, and back. Derived indexes are not serialised: they are rebuilt on load. Pure:
how the parts are stored is the store's business (``store.books``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any, Self

from nftpulse.domain import price as price_engine
from nftpulse.domain.book.fold import BookFold, apply_move
from nftpulse.domain.book.state import OrderKey, Token, _entry_sort_key, _key, _sale_order
from nftpulse.domain.significance import Epsilons
from nftpulse.domain.stats import ListingEntry
from nftpulse.domain.trust import Finding, SaleRecord

#: See ``core_dict``'s ``nft_rows``.
NFT_ROWS = "parts"


def _token_dict(t: Token) -> dict[str, Any]:
    return {
        "owner": t.owner,
        "owner_key": t.owner_key,
        "minted": t.minted,
        "burned": t.burned,
        "traits": t.traits,
        "traits_key": t.traits_key,
        "last_sale": t.last_sale,
        "last_sale_key": t.last_sale_key,
        "listing": t.listing,
        "listing_key": t.listing_key,
        # Only where there are any: most tokens of most collections have neither.
        **({"multi": True} if t.multi else {}),
        **({"offers": t.offers} if t.offers else {}),
    }


class BookCodec(BookFold):
    """A book to and from JSON-ready dicts."""

    # -- serialisation -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable facts plus what was last propagated (derived indexes are rebuilt on load)."""
        return {**self.core_dict(tokens=False), **self.history_dict()}

    def history_dict(self) -> dict[str, Any]:
        """The whole history (sales, listing entries, ERC-1155 moves) and every token's state in JSON form:
        :meth:`to_dict` minus :meth:`core_dict` without its tokens. What grows with the collection, kept
        apart so a store can save it by what changed (:meth:`appended_history_dict`)."""
        return {**self._history_dict(self.sales, self.listing_history), "tokens": self.tokens_dict()}

    def tokens_dict(self, token_ids: Iterable[str] | None = None) -> dict[str, Any]:
        """These tokens' states in JSON form (None: every token's)."""
        tokens = self.tokens
        ids = tokens if token_ids is None else token_ids
        return {tid: _token_dict(tokens[tid]) for tid in ids if tid in tokens}

    def appended_history_dict(self) -> dict[str, Any] | None:
        """The entries appended since the last :meth:`mark_history` and the states of the tokens changed
        since, in :meth:`history_dict`'s form (None: none), so that a store can keep them apart from what
        it already has: a later segment's token state replaces an earlier one's."""
        appended = self._appended
        if not appended:
            return None
        sales: dict[str, list[SaleRecord]] = {}
        for sale in appended.sales:
            sales.setdefault(sale.token_id, []).append(sale)
        listings: dict[str, list[ListingEntry]] = {}
        for token_id, entry in appended.listings:
            listings.setdefault(token_id, []).append(entry)
        moves: dict[str, list[list[Any]]] = {}
        for token_id, key, move in appended.moves:
            moves.setdefault(token_id, []).append([key, *move])
        return {
            "sales": {tid: [sale.to_list() for sale in rows] for tid, rows in sales.items()},
            "listing_history": listings,
            "moves": moves,
            "tokens": self.tokens_dict(sorted(appended.tokens)),
        }

    def _history_dict(
        self, sales: dict[str, list[SaleRecord]], listings: dict[str, list[ListingEntry]]
    ) -> dict[str, Any]:
        return {
            "sales": {tid: self._sale_rows(tid, rows) for tid, rows in sales.items()},
            # orjson writes tuples as arrays: copy the lists, not every entry.
            "listing_history": {tid: list(entries) for tid, entries in listings.items()},
            # ERC-1155 moves (``[key, from, to, quantity]``): history too, growing with every transfer.
            "moves": {
                tid: [[key, *move] for key, move in t.moves.items()]
                for tid, t in self.tokens.items()
                if t.moves
            },
        }

    def core_dict(self, tokens: bool = True) -> dict[str, Any]:
        """:meth:`to_dict` without the history (sales and listing entries); without the tokens' states
        too unless ``tokens``: a 10,000-token collection's are megabytes, saved by what changed."""
        core: dict[str, Any] = {
            "chain": self.chain,
            "contract": self.contract,
            "volume": str(self.volume),
            "sales_count": self.sales_count,
            "clock": self.clock,
            "first_seen": self.first_seen,
            "holder_counts": self.holder_counts,
            "collection_offers": self.collection_offers,
            "signals": {uid: [at, w] for uid, (at, w) in self.signals.items()},
            "findings": {
                fid: {
                    "key": list(f.key),
                    "uid": self.finding_uids.get(fid),
                    "kind": f.kind,
                    "severity": f.severity,
                    "status": f.status,
                    "token_id": f.token_id,
                    "wallets": list(f.wallets),
                }
                for fid, f in self.findings.items()
            },
            "verified": self.verified,
            "verified_at": None
            if self.verified_at is None
            else [list(self.verified_at[0]), self.verified_at[1]],
            "creator": self.creator,
            "creator_at": None if self.creator_at is None else [list(self.creator_at[0]), self.creator_at[1]],
            "daily_volume": {str(day): str(v) for day, v in self.daily_volume.items()},
            "published": self.published,
            "rarity_published": {tid: [s, r] for tid, (s, r) in self._d.publisher.published.items()},
            # The form of this book's stored NFT rows (``domain.book.derive``): a book saved without it
            # has whole views stored, which its next batch replaces with parts.
            "nft_rows": NFT_ROWS,
        }
        if tokens:
            core["tokens"] = self.tokens_dict()
        return core

    def _sale_rows(self, token_id: str, sales: list[SaleRecord]) -> list[list[Any]]:
        """A copy of the token's sales in JSON form: the rows are kept as sales arrive, because
        converting every sale of the history again on each save grew with the history."""
        rows = self._d.sale_rows.get(token_id)
        if rows is None or len(rows) != len(sales):
            rows = self._d.sale_rows[token_id] = [sale.to_list() for sale in sales]
        return list(rows)

    @classmethod
    def from_parts(
        cls,
        core: dict[str, Any],
        history: Sequence[dict[str, Any]],
        epsilons: Epsilons | None = None,
        price_params: price_engine.PriceParams | None = None,
    ) -> Self:
        """A book from :meth:`core_dict` and its history in parts (each in :meth:`history_dict`'s form,
        e.g. successive :meth:`appended_history_dict`), oldest first."""
        sales: dict[str, list[Any]] = {}
        listings: dict[str, list[Any]] = {}
        moves: dict[str, list[Any]] = {}
        # A core saved with its tokens' states (before they were saved by what changed) starts them.
        tokens: dict[str, Any] = dict(core.get("tokens", {}))
        for part in history:
            for tid, rows in part["sales"].items():
                sales.setdefault(tid, []).extend(rows)
            for tid, entries in part["listing_history"].items():
                listings.setdefault(tid, []).extend(entries)
            for tid, rows in part.get("moves", {}).items():
                moves.setdefault(tid, []).extend(rows)
            # A later save's state of a token replaces an earlier one's.
            tokens.update(part.get("tokens", {}))
        whole = {**core, "sales": sales, "listing_history": listings, "moves": moves, "tokens": tokens}
        return cls.from_dict(whole, epsilons, price_params)

    @classmethod
    def from_dict(
        cls,
        raw: dict[str, Any],
        epsilons: Epsilons | None = None,
        price_params: price_engine.PriceParams | None = None,
    ) -> Self:
        """The inverse of :meth:`to_dict`."""

        def stamp(v: Any) -> tuple[OrderKey, str] | None:
            if v is None:
                return None
            k = _key(v[0])
            assert k is not None
            return (k, str(v[1]))

        book = cls.empty(raw["chain"], raw["contract"], epsilons, price_params)
        book.volume = Decimal(raw["volume"])
        book.sales_count = int(raw["sales_count"])
        book.clock = raw.get("clock")
        book.first_seen = raw.get("first_seen")
        book.holder_counts = dict(raw.get("holder_counts", {}))
        book._d.whole_rows = raw.get("nft_rows") != NFT_ROWS
        moves = raw.get("moves", {})
        for tid, t in raw.get("tokens", {}).items():
            book.tokens[tid] = Token(
                token_id=tid,
                owner=t["owner"],
                owner_key=_key(t["owner_key"]),
                minted=t["minted"],
                burned=t["burned"],
                traits=t["traits"],
                traits_key=_key(t["traits_key"]),
                last_sale=t["last_sale"],
                last_sale_key=_key(t["last_sale_key"]),
                listing=t["listing"],
                listing_key=_key(t["listing_key"]),
                multi=bool(t.get("multi")) or tid in moves,
                moves={str(row[0]): list(row[1:]) for row in moves.get(tid, ())},
                offers=dict(t.get("offers", {})),
            )
            for sender, receiver, quantity in book.tokens[tid].moves.values():
                apply_move(book.tokens[tid], sender, receiver, int(quantity))
        # Sorted (stable, so equal keys keep the order they were added in, as the live book keeps them):
        # a history given in parts comes back as each part's entries in turn. Already sorted
        # lists, a whole-book save's, cost one pass.
        book.sales = {
            tid: sorted((SaleRecord.from_list(s) for s in v), key=_sale_order)
            for tid, v in raw.get("sales", {}).items()
        }
        book.listing_history = {
            tid: sorted(
                ((tuple(k), kind, price, expires) for k, kind, price, expires in entries),  # type: ignore[misc]
                key=_entry_sort_key,
            )
            for tid, entries in raw.get("listing_history", {}).items()
        }
        for fid, f in raw.get("findings", {}).items():
            book.findings[fid] = Finding(
                finding_id=fid,
                key=_key(f["key"]) or (-1, -1, ""),
                kind=f["kind"],
                severity=f["severity"],
                status=f["status"],
                token_id=f["token_id"],
                wallets=tuple(f["wallets"]),
            )
            if f.get("uid") is not None:
                book.finding_uids[fid] = f["uid"]
        book.verified = raw.get("verified")
        book.verified_at = stamp(raw.get("verified_at"))
        book.creator = raw.get("creator")
        book.creator_at = stamp(raw.get("creator_at"))
        book.daily_volume = {int(day): Decimal(v) for day, v in raw.get("daily_volume", {}).items()}
        book.collection_offers = dict(raw.get("collection_offers", {}))
        book.signals = {uid: (int(at), float(w)) for uid, (at, w) in raw.get("signals", {}).items()}
        book.published = dict(raw.get("published", {}))
        book._rebuild()
        book._d.publisher.reset(
            book._d.rarity,
            {tid: (float(s), int(r)) for tid, (s, r) in raw.get("rarity_published", {}).items()},
        )
        return book
