"""Time without events, in the domain: a clock event at the book's next moment moves what time alone
moves (a listing's expiry, the time-weighted floor's window, the day), exactly as a recompute of the log
with that clock event does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from nftpulse.domain.book import CollectionBook
from nftpulse.domain.events import Event
from nftpulse.domain.stats import DAY_US, to_us

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
