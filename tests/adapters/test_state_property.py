"""Property: the state Pulse derives from a chain does not depend on how its logs arrive. A simulated chain
(mints, transfers, burns, Seaport sales — each sale's Transfer log and OrderFulfilled log in one
transaction) is decoded, delivered in any order with repeats (deduplicated on (source, id) as the event log
does) and folded into a collection book: the views equal those of the chain-ordered fold, and the owners
equal the chain's."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nftpulse.adapters.logs import LogDecoder, RawLog
from nftpulse.domain.book import CollectionBook
from nftpulse.domain.book.retract import retraction_of
from nftpulse.domain.events import Event
from tests.adapters import logs_factory as f
from tests.domain.eventgen import assert_close, dedupe, rates
from tests.domain.test_retractions import incremental

NFT = "0x" + "c" * 40
SEAPORT_16 = "0x0000000000000068f116a894984e2db1123eb395"
WALLETS = ["0x" + f"{i:040x}" for i in range(1, 5)]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def simulate(rng: random.Random, steps: int) -> tuple[list[dict[str, Any]], dict[str, str | None]]:
    """Logs of a consistent chain and who owns each token at its end (None: burned)."""
    owners: dict[int, str | None] = {}
    logs: list[dict[str, Any]] = []
    for step in range(steps):
        # Two transactions a block; log indexes run across the block, as on a chain.
        block, tx, index = 100 + step // 2, 1 + step, 2 * (step % 2)
        live = [t for t, o in owners.items() if o is not None]
        action = rng.choice(["mint", "transfer", "burn", "sale"] if live else ["mint"])
        if action == "mint":
            token, to = len(owners) + 1, rng.choice(WALLETS)
            logs.append(f.erc721_transfer(NFT, f.ZERO, to, token, block=block, index=index, tx=tx))
            owners[token] = to
            continue
        token = rng.choice(live)
        holder = owners[token]
        assert holder is not None
        if action == "burn":
            logs.append(f.erc721_transfer(NFT, holder, f.ZERO, token, block=block, index=index, tx=tx))
            owners[token] = None
            continue
        to = rng.choice([w for w in WALLETS if w != holder])
        logs.append(f.erc721_transfer(NFT, holder, to, token, block=block, index=index, tx=tx))
        if action == "sale":
            price = rng.randrange(10**16, 5 * 10**18)
            paid = [
                (f.NATIVE, f.ZERO, 0, price * 39 // 40, holder),
                (f.NATIVE, f.ZERO, 0, price // 40, f.ZERO),
            ]
            logs.append(
                f.order_fulfilled(
                    SEAPORT_16,
                    holder,
                    to,
                    [(f.ERC721, NFT, token, 1)],
                    paid,
                    block=block,
                    index=index + 1,
                    tx=tx,
                )
            )
        owners[token] = to
    return logs, {str(t): o for t, o in owners.items()}


def decode(records: list[dict[str, Any]]) -> list[Event]:
    logs = [RawLog.from_json(r) for r in records]
    times = {n: T0 + timedelta(seconds=12 * n) for n in {log.block_number for log in logs}}
    return LogDecoder("ethereum").decode(logs, times).events


def fold(events: list[Event]) -> CollectionBook:
    book = CollectionBook.empty("ethereum", NFT)
    for event in events:
        book.apply(event, rates)
    return book


def views(book: CollectionBook) -> dict[str, Any]:
    return {"collection": book.collection_view(), **{t: book.nft_view(t) for t in sorted(book.tokens)}}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), steps=st.integers(1, 40), repeats=st.integers(0, 20))
def test_any_arrival_order_and_repeats_give_the_chains_state(seed: int, steps: int, repeats: int) -> None:
    rng = random.Random(seed)
    records, truth = simulate(rng, steps)
    in_order = fold(decode(records))
    # Deliveries in any order, some logs twice (a retried webhook, an overlapping backfill).
    deliveries = records + [rng.choice(records) for _ in range(repeats)]
    rng.shuffle(deliveries)
    arrived = fold(dedupe(decode(deliveries)))
    assert_close(views(arrived), views(in_order))
    assert {t: in_order.nft_view(t)["owner"] for t in truth} == truth


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), steps=st.integers(2, 30), repeats=st.integers(0, 10))
def test_an_orphaned_branch_retracted_in_any_order_gives_the_canonical_chains_state(
    seed: int, steps: int, repeats: int
) -> None:
    """A chain and a branch that left it: the branch's logs arrive (some twice), then or before them their
    retractions (as the follower and Alchemy's removed: true make them), in any order and batches: the state
    is the canonical chain's."""
    rng = random.Random(seed)
    records, truth = simulate(rng, steps)
    canonical = decode(records)
    # The orphaned branch: other logs in later blocks (another transaction hash), that the chain dropped.
    fork = rng.randrange(len(records) + 1)
    branch_rng = random.Random(seed + 1)
    branch, _ = simulate(branch_rng, rng.randint(1, 10))
    for record in branch:
        record["transactionHash"] = "0x" + "f" * 8 + record["transactionHash"][10:]
        record["blockNumber"] = hex(int(record["blockNumber"], 16) + 10_000)
    orphaned = decode(branch)
    retractions = [retraction_of(e, "block left the chain") for e in orphaned]
    deliveries = canonical[:fork] + orphaned + canonical[fork:]
    deliveries += retractions + [rng.choice(deliveries + retractions) for _ in range(repeats)]
    rng.shuffle(deliveries)
    cuts = sorted(rng.randrange(len(deliveries) + 1) for _ in range(rng.randint(0, 5)))
    arrived = incremental(deliveries, cuts)
    assert_close(views(arrived), views(fold(canonical)))
    assert {t: arrived.nft_view(t)["owner"] for t in truth} == truth


MULTI = "0x" + "e" * 40


def simulate_1155(rng: random.Random, steps: int) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    """Logs of a consistent ERC-1155 chain (mints, single and batch transfers, burns, Seaport sales of a
    quantity: the TransferSingle and the OrderFulfilled in one transaction) and each id's balances at its
    end."""
    held: dict[int, dict[str, int]] = {}
    logs: list[dict[str, Any]] = []
    operator = WALLETS[0]
    for step in range(steps):
        block, tx, index = 100 + step // 2, 1 + step, 2 * (step % 2)
        owned = [(t, w, q) for t, wallets in held.items() for w, q in wallets.items() if q > 0]
        action = rng.choice(["mint", "transfer", "batch", "burn", "sale"] if owned else ["mint"])
        if action == "mint":
            token, to, qty = rng.randrange(1, 4), rng.choice(WALLETS), rng.randrange(1, 50)
            logs.append(
                f.transfer_single(MULTI, operator, f.ZERO, to, token, qty, block=block, index=index, tx=tx)
            )
            held.setdefault(token, {})[to] = held.get(token, {}).get(to, 0) + qty
            continue
        token, holder, have = rng.choice(owned)
        qty = rng.randrange(1, have + 1)
        to = rng.choice([w for w in WALLETS if w != holder])
        if action == "burn":
            to = f.ZERO
            logs.append(
                f.transfer_single(MULTI, holder, holder, to, token, qty, block=block, index=index, tx=tx)
            )
        elif action == "batch":
            # Every id the holder has, part of each.
            ids = sorted(t for t, w, _ in owned if w == holder)
            values = [rng.randrange(1, held[t][holder] + 1) for t in ids]
            logs.append(
                f.transfer_batch(MULTI, holder, holder, to, ids, values, block=block, index=index, tx=tx)
            )
            for t, v in zip(ids, values, strict=True):
                held[t][holder] -= v
                held[t][to] = held[t].get(to, 0) + v
            continue
        else:
            logs.append(
                f.transfer_single(MULTI, holder, holder, to, token, qty, block=block, index=index, tx=tx)
            )
            if action == "sale":
                price = rng.randrange(10**16, 5 * 10**18)
                paid = [(f.NATIVE, f.ZERO, 0, price, holder)]
                logs.append(
                    f.order_fulfilled(
                        SEAPORT_16,
                        holder,
                        to,
                        [(f.ERC1155, MULTI, token, qty)],
                        paid,
                        block=block,
                        index=index + 1,
                        tx=tx,
                    )
                )
        held[token][holder] -= qty
        if to != f.ZERO:
            held[token][to] = held[token].get(to, 0) + qty
    return logs, {str(t): {w: q for w, q in wallets.items() if q} for t, wallets in held.items()}


def fold_multi(events: list[Event]) -> CollectionBook:
    book = CollectionBook.empty("ethereum", MULTI)
    for event in events:
        book.apply(event, rates)
    return book


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), steps=st.integers(1, 40), repeats=st.integers(0, 20))
def test_erc1155_balances_in_any_order_and_repeats_are_the_chains(
    seed: int, steps: int, repeats: int
) -> None:
    rng = random.Random(seed)
    records, truth = simulate_1155(rng, steps)
    in_order = fold_multi(decode(records))
    deliveries = records + [rng.choice(records) for _ in range(repeats)]
    rng.shuffle(deliveries)
    arrived = fold_multi(dedupe(decode(deliveries)))
    assert_close(views(arrived), views(in_order))
    for token, balances in truth.items():
        view = in_order.nft_view(token)
        assert view["owner"] is None
        assert {h["wallet"]: h["quantity"] for h in view["balances"]["top_holders"]} == {
            w: q for w, q in balances.items() if q > 0
        }
        assert view["balances"]["supply"] == sum(balances.values())
