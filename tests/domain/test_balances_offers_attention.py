"""ERC-1155 balances, offers as state and social attention, on a real collection book."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from nftpulse.domain import price as price_engine
from nftpulse.domain.attention import HALF_LIFE_US, attention
from nftpulse.domain.book import CollectionBook
from nftpulse.domain.events import ZERO_ADDRESS, Event
from tests.domain.eventgen import rates

CONTRACT = "0x" + "d" * 40
A, B, C = ("0x" + c * 40 for c in "abc")
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def ev(n: int, kind: str, token: str | None, data: dict[str, Any], **extra: Any) -> Event:
    return Event(
        id=f"e{n}",
        source="t",
        type=kind,
        occurred_at=extra.pop("at", T0 + timedelta(minutes=n)),
        chain="ethereum",
        contract=CONTRACT,
        token_id=token,
        block_number=extra.pop("block", 100 + n),
        log_index=0,
        data=data,
        **extra,
    )


def fold(events: list[Event]) -> CollectionBook:
    book = CollectionBook.empty("ethereum", CONTRACT)
    for event in events:
        book.apply(event, rates)
    return book


MULTI = {"standard": "erc1155"}
TX = "0x" + "1" * 64


def erc1155_history() -> list[Event]:
    return [
        ev(1, "mint", "7", {"to": A, "quantity": 10, **MULTI}),
        ev(2, "transfer", "7", {"from": A, "to": B, "quantity": 3, **MULTI}),
        # A sale and the TransferSingle log of it, in one transaction: one move of 2, not two.
        ev(3, "transfer", "7", {"from": B, "to": C, "quantity": 2, **MULTI}, tx_hash=TX),
        ev(
            4,
            "sale",
            "7",
            {"from": B, "to": C, "quantity": 2, "price": {"amount": "1", "currency": "ETH"}, **MULTI},
            tx_hash=TX,
            block=103,
        ),
        ev(5, "burn", "7", {"from": A, "quantity": 4, **MULTI}),
        # One unit of another id moves as quantity 1: the standard makes it a balance all the same.
        ev(6, "mint", "8", {"to": A, **MULTI}),
    ]


def test_erc1155_balances_holders_and_supply() -> None:
    book = fold(erc1155_history())
    view = book.nft_view("7")
    assert view["owner"] is None and view["burned"] is False
    assert view["balances"] == {
        "standard": "erc1155",
        "supply": 6,
        "holders_count": 3,
        "top_holders": [
            {"wallet": A, "quantity": 3},
            {"wallet": C, "quantity": 2},
            {"wallet": B, "quantity": 1},
        ],
    }
    assert book.nft_view("8")["balances"]["top_holders"] == [{"wallet": A, "quantity": 1}]
    coll = book.collection_view()
    assert coll["holders_count"] == 3 and coll["supply"] == 2
    assert book.holdings == {A: {"7", "8"}, B: {"7"}, C: {"7"}}


def test_erc1155_any_order_and_round_trip_equal_chain_order() -> None:
    history = erc1155_history()
    ordered = fold(history)
    backwards = fold(list(reversed(history)))
    assert backwards.nft_view("7") == ordered.nft_view("7")
    assert backwards.collection_view() == ordered.collection_view()
    again = CollectionBook.from_dict(ordered.to_dict())
    assert again.nft_view("7") == ordered.nft_view("7") and again.holders == ordered.holders
    # Everything sent back to the zero address: the id is burned out and nobody holds it.
    more = [*history, ev(9, "burn", "7", {"from": B, "quantity": 1, **MULTI})]
    more += [ev(10, "burn", "7", {"from": C, "quantity": 2, **MULTI})]
    more += [ev(11, "burn", "7", {"from": A, "quantity": 3, **MULTI})]
    gone = fold(more).nft_view("7")
    assert gone["burned"] is True and gone["balances"]["holders_count"] == 0


def test_erc721_views_keep_one_owner_and_no_balances() -> None:
    book = fold(
        [
            ev(1, "mint", "1", {"to": A}),
            ev(2, "transfer", "1", {"from": A, "to": B}),
            ev(3, "transfer", "1", {"from": B, "to": ZERO_ADDRESS}),
            ev(4, "mint", "2", {"to": C}),
        ]
    )
    assert book.nft_view("2")["owner"] == C and "balances" not in book.nft_view("2")
    assert book.nft_view("1")["owner"] is None and book.nft_view("1")["burned"] is True
    assert book.collection_view()["holders_count"] == 1


def bid(n: int, token: str | None, bidder: str, amount: str, **data: Any) -> Event:
    return ev(n, "bid", token, {"bidder": bidder, "price": {"amount": amount, "currency": "ETH"}, **data})


def test_best_offers_expire_are_replaced_and_bound_the_estimate() -> None:
    listing = ev(2, "listing", "1", {"seller": A, "price": {"amount": "1", "currency": "ETH"}})
    expires = (T0 + timedelta(hours=1)).isoformat()
    events = [
        ev(1, "mint", "1", {"to": A}),
        listing,
        bid(3, "1", B, "1.5"),
        bid(4, None, C, "1.2", expires_at=expires),
        bid(5, None, B, "0.8"),
    ]
    book = fold(events)
    best = book.nft_view("1")["best_offer"]
    assert best["price"] == "1.5" and best["scope"] == "token" and best["bidder"] == B
    coll = book.collection_view()
    assert coll["best_offer"]["price"] == "1.2" and coll["best_offer"]["bidder"] == C
    # The estimate (floor 1) is lifted to the offer someone stands ready to pay.
    estimate = book.nft_view("1")["price_estimate"]
    assert Decimal(estimate["low"]) >= Decimal("1.5") and Decimal(estimate["value"]) >= Decimal("1.5")
    # B withdraws its token offer (amount 0); later C's collection offer expires with the book's clock.
    book.apply(bid(6, "1", B, "0"), rates)
    assert book.nft_view("1")["best_offer"]["scope"] == "collection"
    book.apply(ev(70, "mint", "2", {"to": C}, at=T0 + timedelta(hours=2)), rates)
    assert book.collection_view()["best_offer"]["price"] == "0.8"
    assert book.nft_view("1")["best_offer"]["bidder"] == B
    # A bidder's older offer arriving late does not replace its newer one.
    book.apply(bid(4, None, B, "9", block=50), rates)
    assert book.collection_view()["best_offer"]["price"] == "0.8"


def test_estimate_rule_with_only_an_offer() -> None:
    only = price_engine.estimate(
        floor=None,
        twap=None,
        rarity_score=None,
        last_sale=None,
        last_sale_age_days=None,
        currency="ETH",
        best_offer=Decimal("2"),
    )
    assert only["value"] == only["low"] == "2.00000000"


def test_attention_is_a_decayed_sum_of_signal_weights() -> None:
    signal = {"platform": "x", "metric": "mentions", "value": 120.0}
    day = timedelta(microseconds=HALF_LIFE_US)
    book = fold(
        [
            ev(1, "social_signal", None, {**signal, "weight": 4.0}, at=T0),
            ev(2, "social_signal", None, signal, at=T0 + day),
        ]
    )
    # 4 halved once, plus 1 now.
    assert book.collection_view()["attention"] == pytest.approx(3.0)
    book.apply(ev(3, "mint", "1", {"to": A}, at=T0 + 3 * day), rates)
    assert book.collection_view()["attention"] == pytest.approx(4 / 8 + 1 / 4)
    assert attention({"x": (0, 1.0)}, 41 * HALF_LIFE_US) == 0.0


def test_erc1155_moves_are_history_saved_in_segments() -> None:
    history = erc1155_history()
    book = fold(history[:2])
    base = book.history_dict()
    book.mark_history()
    for event in history[2:]:
        book.apply(event, rates)
    appended = book.appended_history_dict()
    assert appended is not None and len(appended["moves"]["7"]) == 2  # the sale's move counted once
    core = book.core_dict()
    assert core["tokens"]["7"].get("multi") is True and "moves" not in core["tokens"]["7"]
    again = CollectionBook.from_parts(core, [base, appended])
    assert again.nft_view("7") == book.nft_view("7") and again.nft_view("8") == book.nft_view("8")


def test_trait_offers_buy_only_tokens_with_the_trait_and_offers_of_several_items_price_each() -> None:
    book = fold(
        [
            ev(1, "mint", "1", {"to": A, "traits": {"bg": "red"}}),
            ev(2, "mint", "2", {"to": A, "traits": {"bg": "blue"}}),
            bid(3, None, B, "3", quantity=3),
            bid(4, None, C, "2", trait={"type": "bg", "value": "red"}),
        ]
    )
    coll = book.collection_view()["best_offer"]
    assert (coll["price"], coll["quantity"], coll["bidder"]) == ("1", 3, B)
    red, blue = book.nft_view("1")["best_offer"], book.nft_view("2")["best_offer"]
    assert (red["scope"], red["price"], red["trait"]) == ("trait", "2", {"type": "bg", "value": "red"})
    assert (blue["scope"], blue["price"]) == ("collection", "1")
    # The red token turns blue: the trait offer no longer buys it.
    book.apply(ev(5, "metadata_update", "1", {"traits": {"bg": "blue"}}), rates)
    assert book.nft_view("1")["best_offer"]["scope"] == "collection"
