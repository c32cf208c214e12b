"""Time without events, in the domain: a clock event at the book's next moment moves what time alone
moves (a listing's or an offer's expiry, the time-weighted floor's window, the attention's decay, the
day), exactly as a recompute of the log with that clock event does."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from random import Random
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nftpulse.domain.attention import HALF_LIFE_US, MIN_STEP_US, attention, next_fall
from nftpulse.domain.book import CollectionBook
from nftpulse.domain.events import Event
from nftpulse.domain.significance import moved
from nftpulse.domain.stats import DAY_US, ExpiryIndex, ExpiryKey, to_us
from tests.domain import eventgen as gen
from tests.domain.eventgen import dedupe, streams

CONTRACT = "0x" + "c" * 40
T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def _event(eid: str, kind: str, at: datetime, token: str | None = None, **data: Any) -> Event:
    return Event.model_validate(
        {
            "id": eid,
            "source": "test",
            "type": kind,
            "occurred_at": at.isoformat(),
            "chain": "ethereum",
            "contract": CONTRACT,
            "token_id": token,
            "data": data,
        }
    )


def _no_rates(base: str, quote: str, at: datetime) -> None:
    return None


def _market() -> list[Event]:
    events = []
    for i in (1, 2):
        events.append(_event(f"m{i}", "mint", T0, str(i), to="0x" + str(i) * 40))
    price = {"amount": "1", "currency": "ETH"}
    events.append(
        _event(
            "l1",
            "listing",
            T0,
            "1",
            seller="0x" + "1" * 40,
            price=price,
            expires_at=(T0 + timedelta(hours=1)).isoformat(),
        )
    )
    events.append(
        _event("l2", "listing", T0, "2", seller="0x" + "2" * 40, price={"amount": "2", "currency": "ETH"})
    )
    return events


def _views(book: CollectionBook) -> dict[str, Any]:
    out = {book.nft_key(t): book.nft_view(t) for t in book.tokens}
    out[book.key] = book.collection_view()
    return out


def test_a_listing_lapses_at_its_expiry_through_a_clock_event() -> None:
    book = CollectionBook.recompute("ethereum", CONTRACT, _market(), _no_rates)
    assert book.floor is not None and str(book.floor) == "1"
    due = book.next_moment()
    assert due == to_us((T0 + timedelta(hours=1)).isoformat())

    tick = _event(f"collection:ethereum:{CONTRACT}@x", "clock", datetime.fromtimestamp(due / 1e6, UTC))
    change, failed = book.apply_batch([tick], _no_rates)
    assert not failed
    assert str(book.floor) == "2"
    assert change.metrics[(book.key, "floor")] == ("1", "2")
    # The lapsed token's view shows no listing any more, so it is rewritten though no event names it.
    assert "1" in change.nfts and book.nft_view("1")["active_listing"] is None
    assert _views(book) == _views(
        CollectionBook.recompute("ethereum", CONTRACT, [*_market(), tick], _no_rates)
    )


def test_next_moment_follows_the_twap_window_then_the_day() -> None:
    book = CollectionBook.recompute("ethereum", CONTRACT, _market(), _no_rates)
    at = to_us((T0 + timedelta(hours=1)).isoformat())
    tick = _event("t1", "clock", datetime.fromtimestamp(at / 1e6, UTC))
    book.apply_batch([tick], _no_rates)
    # The floor stepped at the expiry: the window holds the step for a day, moved hourly.
    assert book.next_moment() == at + 3_600_000_000
    twap_before = book.twap_floor()
    tick2 = _event("t2", "clock", datetime.fromtimestamp((at + 3_600_000_000) / 1e6, UTC))
    book.apply_batch([tick2], _no_rates)
    assert book.twap_floor() != twap_before
    # Once the last step left the window, only the next day remains.
    late = _event("t3", "clock", datetime.fromtimestamp((at + DAY_US + 1) / 1e6, UTC))
    trust_before = book.collection_view()["trust"]
    change, _ = book.apply_batch([late], _no_rates)
    # A day passed: the age factor moved (and so the trust it is part of), with no trade at all.
    assert book.collection_view()["trust"] != trust_before and change.collection
    clock = book.clock_us
    assert clock is not None
    assert book.next_moment() == (clock // DAY_US + 1) * DAY_US
    assert str(book.twap_floor()) == "2.000000000000"


# -- offers lapse with time ------------------------------------------------------------------------

BIDDER, OTHER = "0x" + "b" * 40, "0x" + "e" * 40


def _tick(at_us: int, eid: str | None = None) -> Event:
    at = datetime.fromtimestamp(at_us / 1e6, UTC)
    return _event(eid or f"collection:ethereum:{CONTRACT}@{at.isoformat()}", "clock", at)


def _bid(
    eid: str, at: datetime, token: str | None, amount: str, expires: datetime | None, **extra: Any
) -> Event:
    data: dict[str, Any] = {
        "bidder": extra.pop("bidder", BIDDER),
        "price": {"amount": amount, "currency": "ETH"},
    }
    if expires is not None:
        data["expires_at"] = expires.isoformat()
    return _event(eid, "bid", at, token, **data, **extra)


def _scan_offer_expiry(book: CollectionBook) -> int | None:
    """The earliest expiry after the clock of a standing offer, read off every offer (the reference)."""
    offers = [*book.collection_offers.values(), *(o for t in book.tokens.values() for o in t.offers.values())]
    expiries = [
        to_us(o["expires_at"])
        for o in offers
        if o.get("expires_at") is not None and book.live_offer(o) is not None
    ]
    return min(expiries, default=None)


def test_a_token_offer_lapses_at_its_expiry_through_a_clock_event() -> None:
    expires = T0 + timedelta(minutes=30)
    log = [*_market(), _bid("b1", T0, "2", "1.5", expires), _bid("b2", T0, "2", "0.8", None, bidder=OTHER)]
    book = CollectionBook.recompute("ethereum", CONTRACT, log, _no_rates)
    # A first tick: the time-weighted floor appears, so the one at the expiry moves no collection figure.
    settle = _tick(to_us((T0 + timedelta(minutes=5)).isoformat()))
    book.apply_batch([settle], _no_rates)
    assert book.nft_view("2")["best_offer"]["price"] == "1.5"
    due = book.next_moment()
    # Sooner than the listing's expiry at an hour: the offer's.
    assert due == to_us(expires.isoformat()) == _scan_offer_expiry(book)

    tick = _tick(due)
    change, failed = book.apply_batch([tick], _no_rates)
    assert not failed and not change.collection
    # The standing offer without an expiry is the best one now, and the token's view is rewritten for it
    # though no event names the token.
    assert book.nft_view("2")["best_offer"]["price"] == "0.8"
    assert change.nfts == {"2"}
    assert book.next_moment() == to_us((T0 + timedelta(hours=1)).isoformat())
    reference = CollectionBook.recompute("ethereum", CONTRACT, [*log, settle, tick], _no_rates)
    assert _views(book) == _views(reference)


def test_a_failed_event_lapses_nothing() -> None:
    """An event that fails moves no clock: the offers its later time would pass still stand, and no view
    is rewritten for them."""
    log = [*_market(), _bid("b1", T0, "2", "1.5", T0 + timedelta(minutes=30))]
    book = CollectionBook.recompute("ethereum", CONTRACT, log, _no_rates)
    unpriced = _event(
        "s1",
        "sale",
        T0 + timedelta(hours=2),
        "2",
        **{"from": "0x" + "2" * 40, "to": OTHER, "price": {"amount": "1", "currency": "DOGE"}},
    )
    book.apply_batch([_tick(to_us((T0 + timedelta(minutes=5)).isoformat()))], _no_rates)
    tick = _tick(to_us((T0 + timedelta(minutes=6)).isoformat()))
    change, failed = book.apply_batch([tick, unpriced], _no_rates)
    assert [event for event, _ in failed] == [unpriced]
    assert book.clock == tick.occurred_at.isoformat() and "2" not in change.nfts
    assert book.nft_view("2")["best_offer"]["price"] == "1.5"


def test_collection_and_trait_offers_lapse_through_clock_events() -> None:
    coll_at, trait_at = T0 + timedelta(minutes=10), T0 + timedelta(minutes=20)
    log = [
        *_market(),
        _event("md", "metadata_update", T0, "1", traits={"bg": "red"}),
        _bid("c1", T0, None, "0.9", coll_at),
        _bid("t1", T0, None, "1.1", trait_at, bidder=OTHER, trait={"type": "bg", "value": "red"}),
    ]
    book = CollectionBook.recompute("ethereum", CONTRACT, log, _no_rates)
    assert book.collection_view()["best_offer"]["price"] == "0.9"
    assert book.nft_view("1")["best_offer"]["scope"] == "trait"
    assert book.next_moment() == to_us(coll_at.isoformat())

    first = _tick(to_us(coll_at.isoformat()))
    change, _ = book.apply_batch([first], _no_rates)
    assert book.collection_view()["best_offer"] is None
    assert change.metrics[(book.key, "best_offer")] == ("0.9", None)
    assert book.next_moment() == to_us(trait_at.isoformat())

    second = _tick(to_us(trait_at.isoformat()))
    change, _ = book.apply_batch([second], _no_rates)
    assert book.nft_view("1")["best_offer"] is None and change.collection
    assert _scan_offer_expiry(book) is None
    assert book.next_moment() == to_us((T0 + timedelta(hours=1)).isoformat())
    reference = CollectionBook.recompute("ethereum", CONTRACT, [*log, first, second], _no_rates)
    assert _views(book) == _views(reference)


def test_offer_expiries_are_rebuilt_on_load_and_refold() -> None:
    soon, later = T0 + timedelta(minutes=5), T0 + timedelta(minutes=40)
    log = [
        *_market(),
        _bid("b1", T0, "1", "1", later),
        # The bidder's newer offer replaces the one expiring later: only its expiry counts.
        _bid("b2", T0 + timedelta(seconds=1), "1", "1.2", soon),
        # A withdrawal (price 0) with an expiry stands for nothing.
        _bid("b3", T0, None, "0", T0 + timedelta(minutes=1), bidder=OTHER),
    ]
    book = CollectionBook.recompute("ethereum", CONTRACT, log[:-3], _no_rates)
    book.apply_batch(log[-3:], _no_rates)
    assert book.next_offer_expiry() == soon.isoformat()

    loaded = CollectionBook.from_dict(book.to_dict())
    assert loaded.next_offer_expiry() == soon.isoformat() and loaded.next_moment() == book.next_moment()

    # Retracting the newer offer refolds the collection without it: the earlier one stands again.
    retraction = _event("r", "retraction", T0, "1", retracts={"source": "test", "id": "b2"})
    refolded = CollectionBook.recompute("ethereum", CONTRACT, [*log, retraction], _no_rates)
    assert refolded.next_offer_expiry() == later.isoformat()
    assert refolded.next_moment() == to_us(later.isoformat())
    assert refolded.nft_view("1")["best_offer"]["price"] == "1"


@st.composite
def _offer_streams(draw: Any) -> list[Event]:
    """Tokens minted, then offers (token, collection and trait, some withdrawn, most expiring within
    hours) a few minutes apart: many standing offers lapse between one batch and the next."""
    events = [
        Event(
            id=f"m{tid}",
            source="gen",
            type="mint",
            occurred_at=gen.T0,
            chain=gen.CHAIN,
            contract=gen.CONTRACT,
            token_id=tid,
            block_number=1,
            log_index=int(tid),
            data={"to": gen.WALLETS[0], "traits": {"bg": draw(st.sampled_from(["red", "blue"]))}},
        )
        for tid in gen.TOKENS
    ]
    for i in range(draw(st.integers(1, 30))):
        at = gen.T0 + timedelta(minutes=5 * (i + 1))
        data: dict[str, Any] = {
            "bidder": draw(st.sampled_from(gen.WALLETS[:3])),
            "price": {"amount": draw(st.sampled_from(["0", "0.5", "1", "2"])), "currency": "ETH"},
        }
        if draw(st.integers(0, 4)):
            data["expires_at"] = (at + timedelta(minutes=draw(st.integers(1, 240)))).isoformat()
        token: str | None = draw(st.sampled_from([*gen.TOKENS, None]))
        if token is None and draw(st.booleans()):
            data["trait"] = {"type": "bg", "value": draw(st.sampled_from(["red", "blue"]))}
        events.append(
            Event(
                id=f"b{i}",
                source="gen",
                type="bid",
                occurred_at=at,
                chain=gen.CHAIN,
                contract=gen.CONTRACT,
                token_id=token,
                block_number=10 + i,
                log_index=0,
                data=data,
            )
        )
    return events


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(streams(), _offer_streams()), st.randoms(use_true_random=False))
def test_the_offer_index_follows_every_fold(events: list[Event], rnd: Random) -> None:
    """Incrementally, after a load and in a recompute, the next offer expiry is the one a scan of every
    offer finds; a clock event at the book's next moment rewrites the tokens whose own offer it lapses and
    leaves the book equal to a recompute of the log."""
    unique = dedupe(events)
    shuffled = unique[:]
    rnd.shuffle(shuffled)
    book = CollectionBook.empty(gen.CHAIN, gen.CONTRACT)
    log: list[Event] = []
    at = 0
    while at < len(shuffled):
        batch = shuffled[at : at + rnd.randint(1, 8)]
        at += len(batch)
        book.apply_batch(batch, gen.rates)
        log += batch
        expected = _scan_offer_expiry(book)
        assert book.next_offer_expiry() == (None if expected is None else _iso(expected))
        due = book.next_moment()
        assert due is not None and (expected is None or due <= expected)
        if rnd.random() < 0.6:
            # At the book's next moment, or at the next offer expiry (any instant on is a valid tick).
            if expected is not None and rnd.random() < 0.5:
                due = expected
            tick = Event(
                id=f"tick{at}",
                source="pulse.clock",
                type="clock",
                occurred_at=datetime.fromtimestamp(due / 1e6, UTC),
                chain=gen.CHAIN,
                contract=gen.CONTRACT,
            )
            before = {tid: book.nft_view(tid)["best_offer"] for tid in book.tokens}
            change, _ = book.apply_batch([tick], gen.rates)
            log.append(tick)
            stamp = tick.occurred_at.isoformat()
            for tid, offer in before.items():
                # A token's own offer the tick lapsed: its view is rewritten, whatever else moved.
                if offer is not None and offer["scope"] == "token" and (offer["expires_at"] or "~") <= stamp:
                    assert tid in change.nfts
    loaded = CollectionBook.from_dict(orjson.loads(orjson.dumps(book.to_dict())))
    reference = CollectionBook.recompute(gen.CHAIN, gen.CONTRACT, log, gen.rates)
    for other in (loaded, reference):
        assert other.next_offer_expiry() == book.next_offer_expiry()
    gen.assert_close(_views(book), _views(reference))


def _iso(moment: int) -> str:
    return datetime.fromtimestamp(moment / 1e6, UTC).isoformat()


# -- attention decays with time ----------------------------------------------------------------------


def test_next_fall_is_the_closed_form_of_the_decay() -> None:
    clock = to_us(T0.isoformat())
    rel = 0.01
    due = next_fall(10.0, 10.0, rel, clock)
    assert due is not None
    # About log2(1 / 0.99) of a half-life: 20.9 minutes.
    assert abs((due - clock) - HALF_LIFE_US * math.log2(1 / 0.99)) < 60_000_000
    signals = {"s": (clock, 10.0)}
    # At the instant the published figure has fallen by the epsilon; a second earlier it had not.
    assert moved(10.0, attention(signals, due), rel=rel)
    assert not moved(10.0, attention(signals, due - 1_000_000), rel=rel)
    # From a figure that rose since it was published, the fall is measured from the published one.
    rose = next_fall(10.05, 10.0, rel, clock)
    assert rose is not None and rose > due
    assert moved(10.0, attention({"s": (clock, 10.05)}, rose), rel=rel)
    # Nothing to decay; a zero epsilon is bounded below; a figure already past it is a minute away.
    assert next_fall(0.0, 3.0, rel, clock) is None
    assert next_fall(5.0, 5.0, 0.0, clock) == clock + MIN_STEP_US
    assert next_fall(5.0, 10.0, rel, clock) == clock + MIN_STEP_US
    # Down to nothing in a few falls, each past the epsilon; then nothing is scheduled.
    published, at, falls = 0.000003, clock, 0
    while (due := next_fall(attention({"s": (clock, 0.000003)}, at), published, rel, at)) is not None:
        now = attention({"s": (clock, 0.000003)}, due)
        assert moved(published, now, rel=rel)
        published, at, falls = now, due, falls + 1
    assert published == 0.0 and falls <= 3


def test_attention_follows_its_decay_through_clock_events() -> None:
    log = [*_market()]
    log += [
        _event(f"s{i}", "social_signal", T0, None, platform="x", metric="mentions", value=1.0, weight=4.0)
        for i in range(3)
    ]
    book = CollectionBook.recompute("ethereum", CONTRACT, log[:-3], _no_rates)
    book.apply_batch(log[-3:], _no_rates)
    assert book.published["attention"] == 12.0
    fall = next_fall(12.0, 12.0, book.epsilons.attention_rel, to_us(T0.isoformat()))
    assert fall is not None and book.next_moment() == fall < to_us((T0 + timedelta(hours=1)).isoformat())

    ticks: list[Event] = []
    published = 12.0
    # Two falls of about 21 minutes each, before the listing's expiry at an hour.
    for _ in range(2):
        due = book.next_moment()
        assert due is not None and due == fall
        tick = _tick(due)
        ticks.append(tick)
        change, _ = book.apply_batch([tick], _no_rates)
        # Each fall past the epsilon is published and reported, with no event but the clock's.
        was, now = change.metrics[(book.key, "attention")]
        assert was == published and now <= published * 0.99
        assert book.published["attention"] == now == book.collection_view()["attention"]
        published = now
        fall = next_fall(now, now, book.epsilons.attention_rel, due)
    reference = CollectionBook.recompute("ethereum", CONTRACT, [*log, *ticks], _no_rates)
    assert _views(book) == _views(reference)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.one_of(st.none(), st.integers(0, 500)), st.integers(0, 20)),
        max_size=400,
    )
)
def test_the_expiry_index_answers_as_a_scan_and_stays_small(ops: list[tuple[int, int | None, int]]) -> None:
    """Puts (key, expiry or None) with a clock moving on: the next expiry and what a later clock lapses
    are those a scan of the current entries finds, and replaced items do not pile up in the heap."""
    index = ExpiryIndex()
    standing: dict[ExpiryKey, str] = {}
    clock = 0

    def stamp(n: int) -> str:
        return f"{n:04d}"

    for slot, expiry, step in ops:
        key: ExpiryKey = (1, str(slot), "b")
        index.put(key, None if expiry is None else stamp(expiry))
        assert len(index._heap) <= 2 * len(index.entries) + 64
        if expiry is None:
            standing.pop(key, None)
        else:
            standing[key] = stamp(expiry)
        clock += step
        if step % 3 == 0:
            # A listing index lapses what its clock reaches: forgotten, and named unless already dropped.
            gone = index.pop_through(stamp(clock))
            assert gone <= {k for k, at in standing.items() if at <= stamp(clock)}
            assert all(at > stamp(clock) for at in index.entries.values())
            standing = {k: at for k, at in standing.items() if at > stamp(clock)}
        live = {k: at for k, at in standing.items() if at > stamp(clock)}
        assert index.next_after(stamp(clock)) == min(live.values(), default=None)
        until = stamp(clock + 50)
        assert index.lapsing(stamp(clock), until) == {k for k, at in live.items() if at <= until}
