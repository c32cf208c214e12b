"""A collection book's read models: the NFT and collection views the API serves, and the headline
figures significance is judged by (floor series, time-weighted floor, market condition, trust, risk,
price estimates). Pure; cached per state of their inputs."""

from __future__ import annotations

from bisect import bisect_right
from decimal import Decimal
from typing import Any

from nftpulse.domain import attention as attention_engine
from nftpulse.domain import market as market_engine
from nftpulse.domain import price as price_engine
from nftpulse.domain import risk as risk_engine
from nftpulse.domain import trust as trust_engine
from nftpulse.domain.book import derive
from nftpulse.domain.book.state import TWAP_WINDOW_US, BookState, Token, _sale_order
from nftpulse.domain.stats import DAY_US, OPEN, FloorSeries, gini, to_us, top_share
from nftpulse.domain.trust import SaleRecord, TrustResult

#: While the time-weighted floor's window still holds an earlier step, time alone moves it: it is brought
#: up to date at least this often for a quiet collection (``BookViews.next_moment``).
TWAP_STEP_US = 3_600 * 1_000_000


class BookViews(BookState):
    """The read models of a book's state."""

    def twap_floor(self) -> Decimal | None:
        """Time-weighted floor over the last :data:`TWAP_WINDOW_US` of the book's clock."""
        now = self.clock_us
        if now is None:
            return None
        key = (self._d.history_version, now)
        if self._d.twap is None or self._d.twap[0] != key:
            self._d.twap = (key, self._series().average(now - TWAP_WINDOW_US, now))
        return self._d.twap[1]

    def next_moment(self) -> int | None:
        """The next instant after the book's clock (microseconds) at which a figure moves with time alone:
        the earliest expiry of an active listing (the floor) and of a standing offer (token, collection
        or trait: the best offers and the price estimates raised to them), the time-weighted floor's
        window while it still holds an earlier step (hourly, and the instant the last step leaves it),
        the instant the attention has decayed by its epsilon from its published value, and the next UTC
        day (the age factor, the last sale's decay, the daily series). None: the book has no clock yet.

        A clock event at that instant (``EventType.CLOCK``) makes the figures move through the normal
        fold, so the state at any instant equals a recompute of the log up to it."""
        now = self.clock_us
        if now is None:
            return None
        moments = [(now // DAY_US + 1) * DAY_US]
        for expiry in (self._d.listings.next_expiry(), self.next_offer_expiry()):
            if expiry is not None:
                moments.append(to_us(expiry))
        fall = attention_engine.next_fall(
            attention_engine.attention(self.signals, now),
            self.published.get("attention"),
            self.epsilons.attention_rel,
            now,
        )
        if fall is not None:
            moments.append(fall)
        times = self._series().times
        last = bisect_right(times, now) - 1
        if last >= 0 and times[last] + TWAP_WINDOW_US > now:
            moments.append(min(times[last] + TWAP_WINDOW_US, now + TWAP_STEP_US))
        return min(moment for moment in moments if moment > now)

    def _series(self) -> FloorSeries:
        version = self._d.history_version
        if self._d.series is None or self._d.series[0] != version:
            # Updated in place from the first moment a change since the last build can affect: the
            # series is only ever read through this cache, so nobody else holds the old steps.
            series = FloorSeries() if self._d.series is None else self._d.series[1]
            series.update(self._d.by_end, OPEN if self._d.series is None else self._d.dirty_since)
            self._d.series = (version, series)
            self._d.dirty_since = OPEN
        return self._d.series[1]

    def market(self) -> dict[str, Any]:
        """``{trend, anomaly}`` from the daily floor and volume series up to the clock's day."""
        now = self.clock_us
        cache_key = (self._d.history_version, self._d.sales_version, self.clock)
        if self._d.market is not None and self._d.market[0] == cache_key:
            return self._d.market[1]
        result: dict[str, Any]
        if now is None:
            result = market_engine.condition([], [])
        else:
            series = self._series()
            days = [d for d in self.daily_volume] + ([series.times[0] // DAY_US] if series.times else [])
            first = min(days) if days else now // DAY_US
            floors: list[float | None] = []
            volumes: list[float] = []
            for day in range(first, now // DAY_US + 1):
                start, end = day * DAY_US, min((day + 1) * DAY_US, now)
                avg = series.average(start, end) if end > start else None
                floors.append(None if avg is None else float(avg))
                volumes.append(float(self.daily_volume.get(day, Decimal(0))))
            result = market_engine.condition(floors, volumes)
        self._d.market = (cache_key, result)
        return result

    def _collection_parts(self) -> tuple[dict[str, Any], TrustResult, dict[str, Any]]:
        """The collection headline, its trust and its risk; cached per state of their inputs."""
        cache_key = self._d.state_version
        if self._d.headline is not None and self._d.headline[0] == cache_key:
            return self._d.headline[1], self._d.headline[2], self._d.headline[3]
        floor, twap = self.floor, self.twap_floor()
        hist = self._d.hold_hist
        top10, gini_value = top_share(hist), gini(hist)
        now = self.clock_us
        # Whole days: the age factor moves once a day, not on every tick of the clock.
        age_days = 0 if now is None or self.first_seen is None else (now - to_us(self.first_seen)) // DAY_US
        clean = self._d.wash.sales - self._d.wash.flagged
        trust = trust_engine.collection_trust(
            wash_share=self.wash_share,
            top10=top10,
            gini_value=gini_value,
            holders=self.holders,
            supply=sum(size * count for size, count in hist.items()),
            verified=self.verified,
            findings=self.findings,
            age_days=age_days,
            clean_sales=clean,
        )
        market = self.market()
        best_offer = self.best_collection_offer()
        risk = risk_engine.collection_risk(
            findings=self.findings.values(),
            trust=trust.score,
            wash_share=self.wash_share,
            anomaly=bool(market["anomaly"]["outlier"]),
        )
        headline = {
            "floor": None if floor is None else str(floor),
            "twap_floor": None if twap is None else str(twap),
            "volume": str(self.volume),
            "sales_count": self.sales_count,
            "holders_count": self.holders,
            "supply": self.supply,
            "listed_count": len(self._d.listings),
            "top10_share": round(top10, 6),
            "gini": round(gini_value, 6),
            "wash_share": round(self.wash_share, 6),
            "trust": trust.score,
            "risk": risk["level"],
            "trend": market["trend"],
            "anomaly": bool(market["anomaly"]["outlier"]),
            "anomaly_z": {k: v["z"] for k, v in market["anomaly"].items() if isinstance(v, dict)},
            "trust_factors": {f["factor"]: round(f["contribution"], 2) for f in trust.factors},
            "risk_reasons": [[r["code"], r["level"], r["detail"]] for r in risk["reasons"]],
            "open_findings": sum(1 for f in self.findings.values() if f.open),
            "age_days": age_days,
            "clean_sales": clean,
            "verified_creator": self.verified,
            "rarity_entropy": round(self._d.rarity.entropy, 6),
            "best_offer": None if best_offer is None else best_offer["price"],
            # Which offer that is (a view shows its bidder and expiry): hidden, but a driver.
            "best_offer_id": None if best_offer is None else "/".join(map(str, best_offer["key"])),
            "trait_offers": self.trait_offers_digest(),
            "attention": attention_engine.attention(self.signals, now),
            "day": None if now is None else now // DAY_US,
        }
        self._d.headline = (cache_key, headline, trust, risk)
        return headline, trust, risk

    def _collection_headline(self) -> dict[str, Any]:
        return dict(self._collection_parts()[0])

    def _nft_headline(self, token_id: str) -> dict[str, Any]:
        """The figures of :meth:`nft_view` a change is judged by, without building the whole view
        (its reasons and factors grow with the findings about the token's owner)."""
        t = self.tokens[token_id]
        _, coll_trust, coll_risk = self._collection_parts()
        findings = self._findings_of(token_id)
        token_wash = self.token_wash_share(token_id)
        owner = t.single_owner
        return {
            "owner": owner,
            "trust": round(trust_engine.nft_trust(coll_trust, token_wash, findings).score, 2),
            "risk": risk_engine.nft_risk_level(
                collection=coll_risk, findings=findings, token_wash_share=token_wash
            ),
            "price_estimate": self._price_estimate(token_id)["value"],
            "rarity_rank": self._d.rarity.rank(token_id),
            # The token's stored part but its rarity (which the publisher's epsilons govern): when any of
            # it moves, the part is rewritten.
            "_core": self._own_part(token_id),
        }

    # -- read models -------------------------------------------------------------------------------

    def rarity_view(self, token_id: str) -> dict[str, Any] | None:
        """``{score, rank}`` of a live token, None otherwise."""
        score = self._d.rarity.score(token_id)
        if score is None:
            return None
        return {"score": round(score, 6), "rank": self._d.rarity.rank(token_id)}

    def nft_view(self, token_id: str) -> dict[str, Any]:
        """The API's read model of one NFT: :func:`derive.nft_view` of its part and the collection's factors,
        as a read of the stored rows derives it."""
        return derive.nft_view(self.nft_part(token_id), self.nft_factors())

    def nft_part(self, token_id: str) -> dict[str, Any]:
        """What an NFT's stored row holds: the fields that are the token's own and the inputs its trust,
        risk and price estimate are derived from together with :meth:`nft_factors`."""
        part = self._own_part(token_id)
        part["rarity"] = self.rarity_view(token_id)
        part[derive.INPUTS]["rarity_score"] = self._d.rarity.score(token_id)
        return part

    def _own_part(self, token_id: str) -> dict[str, Any]:
        """:meth:`nft_part` without the rarity fields."""
        t = self.tokens[token_id]
        # Only open findings count: closed ones are left out of the row.
        findings = sorted(
            ([f.finding_id, f.kind, f.severity] for f in self._findings_of(token_id) if f.open),
            key=lambda f: f[0],
        )
        clean = self._last_clean_sale(token_id)
        part: dict[str, Any] = {
            "chain": self.chain,
            "contract": self.contract,
            "token_id": token_id,
            "owner": t.single_owner,
            "burned": t.gone,
            "traits": t.traits,
            "last_sale": t.last_sale,
            "active_listing": self._active_listing(t),
            derive.INPUTS: {
                "wash_share": self.token_wash_share(token_id),
                "findings": findings,
                "clean_sale": None if clean is None else [str(clean.price), clean.at_us // DAY_US],
                "own_offer": self._best_of(t.offers),
            },
        }
        if t.multi:
            # An ERC-1155 token has no single owner: who holds how many units instead.
            part["balances"] = self.balances_view(t)
        return part

    def nft_factors(self) -> dict[str, Any]:
        """The collection figures every NFT view derives from (stored in the collection's row)."""
        version = self._d.state_version
        if self._d.factors is not None and self._d.factors[0] == version:
            return self._d.factors[1]
        _, trust, risk = self._collection_parts()
        floor, twap, now = self.floor, self.twap_floor(), self.clock_us
        collection_offer, standing = self._collection_offers()
        factors = {
            "trust": trust.score,
            "risk": risk["level"],
            "floor": None if floor is None else str(floor),
            "twap_floor": None if twap is None else str(twap),
            "day": None if now is None else now // DAY_US,
            "currency": self.currency,
            "price_params": derive.price_params_json(self.price_params),
            "collection_offer": collection_offer,
            "trait_offers": sorted(standing.items()),
        }
        self._d.factors = (version, factors)
        return factors

    #: How many of an ERC-1155 token's holders its view lists.
    TOP_HOLDERS = 10

    def balances_view(self, token: Token) -> dict[str, Any]:
        """``{supply, holders_count, top_holders: [{wallet, quantity}]}``: the largest balances first,
        ties by wallet."""
        held = sorted(((-q, w) for w, q in token.balances.items() if q > 0))
        return {
            "standard": "erc1155",
            "supply": max(token.units, 0),
            "holders_count": len(held),
            "top_holders": [{"wallet": w, "quantity": -q} for q, w in held[: self.TOP_HOLDERS]],
        }

    def _price_estimate(self, token_id: str) -> dict[str, Any]:
        clean = self._last_clean_sale(token_id)
        now = self.clock_us
        offer = self.best_offer(token_id)
        return price_engine.estimate(
            best_offer=None if offer is None else Decimal(offer["price"]),
            floor=self.floor,
            twap=self.twap_floor(),
            rarity_score=self._d.rarity.score(token_id),
            last_sale=None if clean is None else clean.price,
            last_sale_age_days=None
            if clean is None or now is None
            else now // DAY_US - clean.at_us // DAY_US,
            currency=self.currency,
            params=self.price_params,
        )

    def _last_clean_sale(self, token_id: str) -> SaleRecord | None:
        flags = self._d.wash.flags.get(token_id, {})
        sales = self.sales.get(token_id, [])
        # Sales are only added and flags only added, so the two counts change whenever the answer can:
        # the scan back over a run of flagged sales is done once per change, not once per view.
        key = (len(sales), len(flags))
        cached = self._d.last_clean.get(token_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        found = None
        # Only sales after the previous answer can be newer answers; if none of them is clean and the
        # previous answer is still clean, it stands (a token's flagged run is not read again).
        previous = None if cached is None else cached[1]
        stop = 0
        if previous is not None and previous.uid not in flags:
            stop = bisect_right(sales, previous.sort_key, key=_sale_order)
            found = previous
        for at in range(len(sales) - 1, stop - 1, -1):
            if sales[at].uid not in flags:
                found = sales[at]
                break
        self._d.last_clean[token_id] = (key, found)
        return found

    def collection_row(self) -> dict[str, Any]:
        """What the collection's stored row holds: its view and the factors its NFTs' views derive from."""
        return {**self.collection_view(), derive.FACTORS: self.nft_factors()}

    def collection_view(self) -> dict[str, Any]:
        """The API's read model of the collection."""
        headline, trust, risk = self._collection_parts()
        market = self.market()
        best_offer = self.best_collection_offer()
        return {
            "chain": self.chain,
            "contract": self.contract,
            "currency": self.currency,
            "floor": headline["floor"],
            "twap_floor": headline["twap_floor"],
            "volume": headline["volume"],
            "sales_count": self.sales_count,
            "holders_count": self.holders,
            "supply": self.supply,
            "listed_count": len(self._d.listings),
            "top10_share": headline["top10_share"],
            "gini": headline["gini"],
            "wash_share": headline["wash_share"],
            "verified_creator": headline["verified_creator"],
            "creator": self.creator,
            "rarity_entropy": headline["rarity_entropy"],
            "best_offer": None if best_offer is None else {k: v for k, v in best_offer.items() if k != "key"},
            "attention": headline["attention"],
            "trust": trust.view(),
            "risk": risk,
            "market": {"trend": market["trend"], "anomaly": market["anomaly"]},
        }


# -- per-type handlers -----------------------------------------------------------------------------
#
# Each type has a ``_prep_*`` step that reads and converts everything of the event's data that can
# raise (missing fields, prices without a rate, timestamps, unhashable wallets) without touching the
# book, and a handler that folds the prepared values in and cannot fail on the data.
