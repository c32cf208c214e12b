"""Isolation behind the door: whatever an accepted event makes the engines raise, it fails alone (failed,
listed in /v1/ops/failures, replayable) and unrelated events on the same shard are processed. Random
events with extreme but accepted values (hypothesis) go to one shard together with canaries, through the
real Temporal dev server and worker."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.client import Client

from nftpulse.activities.contracts.notify import DetectInput
from nftpulse.activities.contracts.pipeline import ChangeSet
from nftpulse.activities.notify.detection import DetectionActivities
from nftpulse.channels.registry import ChannelRegistry
from nftpulse.domain.changes import MetricChange
from nftpulse.domain.events import INT64_MAX
from nftpulse.store import events as event_store
from nftpulse.store import notify as notify_store
from nftpulse.store import schema, watching
from nftpulse.store.db import Database
from nftpulse.store.events import ReplayFilter
from tests.conftest import RunningPulse, run_pulse

A, B = "0x" + "11" * 20, "0x" + "22" * 20
#: The largest amount and rate the door accepts: a sale of it in USDC at this USDC/ETH rate is worth
#: 10^30 ETH, past what the price engine quantizes (decimal.InvalidOperation outside the event's fold).
BIG = "9" * 15 + "." + "9" * 18
SUSPECTS = ["0x" + f"{i:02x}" * 20 for i in (0xE1, 0xE2)]
CANARIES = ["0x" + f"{i:02x}" * 20 for i in (0xC1, 0xC2)]
_ids = itertools.count()


@pytest_asyncio.fixture
async def one_shard(tmp_path: Path, temporal_client: Client) -> AsyncIterator[RunningPulse]:
    async with run_pulse(f"sqlite:///{tmp_path / 'pulse.db'}", temporal_client, shards=1) as pulse:
        tick = {
            "id": "rate",
            "source": "iso",
            "type": "price_tick",
            "occurred_at": "2026-01-01T00:00:00Z",
            "chain": "ethereum",
            "contract": "0x" + "cd" * 20,
            "data": {"pair": "USDC/ETH", "rate": BIG},
        }
        assert (await pulse.post(tick)).status_code == 202
        await pulse.wait_final([("iso", "rate")])
        yield pulse


def _event(contract: str, kind: str, token: str, data: dict[str, Any], **over: Any) -> dict[str, Any]:
    event = {
        "id": f"e{next(_ids)}",
        "source": "iso",
        "type": kind,
        "occurred_at": "2026-01-01T01:00:00Z",
        "chain": "ethereum",
        "contract": contract,
        "token_id": token,
        "data": data,
    }
    return event | over


amounts = st.sampled_from(["0", "0.000000000000000001", "1", "123456789012345", BIG])
prices = st.fixed_dictionaries({"amount": amounts, "currency": st.sampled_from(["ETH", "USDC"])})
tokens = st.sampled_from(["0", "1", "9" * 78])
extremes = st.fixed_dictionaries(
    {},
    optional={
        "block_number": st.sampled_from([0, 1, INT64_MAX]),
        "log_index": st.sampled_from([0, INT64_MAX]),
        "occurred_at": st.sampled_from(["1970-01-01T00:00:00Z", "2199-12-31T23:59:59Z"]),
    },
)


@st.composite
def suspects(draw: st.DrawFn) -> dict[str, Any]:
    contract = draw(st.sampled_from(SUSPECTS))
    token = draw(tokens)
    kind = draw(st.sampled_from(["mint", "sale", "listing", "bid"]))
    data: dict[str, Any] = {
        "mint": {
            "to": A,
            "traits": draw(
                st.dictionaries(
                    st.sampled_from("ab"), st.floats(allow_nan=False, allow_infinity=False), max_size=2
                )
            ),
        },
        "sale": {"from": A, "to": B, "price": draw(prices)},
        "listing": {"seller": A, "price": draw(prices)},
        "bid": {"bidder": B, "price": draw(prices)},
    }[kind]
    return _event(contract, kind, token, data, **draw(extremes))


def _canaries() -> list[dict[str, Any]]:
    out = []
    for contract in CANARIES:
        out.append(_event(contract, "mint", "1", {"to": A}))
        out.append(
            _event(contract, "sale", "1", {"from": A, "to": B, "price": {"amount": "1.5", "currency": "ETH"}})
        )
    return out


async def _check_batch(pulse: RunningPulse, batch: list[dict[str, Any]]) -> None:
    resp = await pulse.post(batch)
    assert resp.status_code == 202, resp.text
    final = await pulse.wait_final([("iso", e["id"]) for e in batch], limit_s=60)
    canaries = {e["id"] for e in batch if e["contract"] in CANARIES}
    assert all(final[("iso", c)] == "processed" for c in canaries), final
    failed = [ref for ref, status in final.items() if status == "failed"]
    if failed:
        listed = (
            await pulse.http.get("/v1/ops/failures", params={"limit": 500}, headers=pulse.keys.auth("admin"))
        ).json()["items"]
        assert {("iso", f["id"]) for f in listed} >= set(failed)
        # Replayable: sent back through the dispatcher, it ends final again (failed, as nothing changed).
        seqs = event_store.seqs_matching(pulse.db, ReplayFilter(source="iso", external_id=failed[0][1]))
        assert event_store.requeue(pulse.db, seqs) == 1
        again = await pulse.wait_final([failed[0]], limit_s=60)
        assert again[failed[0]] == "failed"


async def test_a_sale_the_engines_cannot_value_fails_alone(one_shard: RunningPulse) -> None:
    """The case that stalled a shard: the price engine raised for the whole batch on every retry."""
    poison = _event(
        SUSPECTS[0], "sale", "1", {"from": A, "to": B, "price": {"amount": BIG, "currency": "USDC"}}
    )
    neighbour = _event(SUSPECTS[0], "mint", "2", {"to": A})
    await _check_batch(
        one_shard, [_event(SUSPECTS[0], "mint", "1", {"to": A}), neighbour, poison, *_canaries()]
    )
    assert (await one_shard.status("iso", poison["id"]))["status"] == "failed"
    assert (await one_shard.status("iso", neighbour["id"]))["status"] == "processed"


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(batch=st.lists(suspects(), min_size=1, max_size=12))
async def test_random_events_never_hold_back_canaries(
    one_shard: RunningPulse, batch: list[dict[str, Any]]
) -> None:
    fresh = [e | {"id": f"e{next(_ids)}"} for e in batch]  # hypothesis may replay an example
    await _check_batch(one_shard, [*fresh, *_canaries()])


# -- rules: one subscription's broken rule holds back no one ----------------------------------------------

_subs = itertools.count()
numbers = st.one_of(
    st.floats(),  # NaN, ±Infinity, ±1e308 and everything between
    st.integers(min_value=-(2**63), max_value=2**63 - 1),  # what a JSON column stores
    st.sampled_from(["Infinity", "NaN", "1e999999", "-0", "x", ""]),
    st.none(),
)
rules = st.fixed_dictionaries(
    {
        "id": st.text(min_size=1, max_size=8),
        "kind": st.sampled_from(["threshold", "relative_change", "trend_reversal", "anomaly", "new_risk"]),
        "metric": st.sampled_from(["floor", "risk"]),
    },
    optional={
        name: numbers
        for name in (
            "cooldown_s",
            "level",
            "rearm",
            "pct",
            "window_s",
            "rearm_pct",
            "band",
            "fast_alpha",
            "slow_alpha",
            "z",
            "rearm_z",
            "critical_pct",
        )
    },
)


def _seed_sub(db: Database, user_id: str, entity: str, rule_list: list[dict[str, Any]]) -> None:
    """As a subscription stored before the rule bounds existed (straight into the table)."""
    now = datetime.now(UTC)
    with db.write() as s:
        s.add(notify_store.NotifyUser(id=user_id, updated_at=now))
        s.flush()
        sub = notify_store.Subscription(
            id=f"sub_{user_id}",
            user_id=user_id,
            target="collection",
            entity_key=entity,
            rules=rule_list,
            created_at=now,
            updated_at=now,
        )
        s.add(sub)
        s.flush()
        watching.replace_subscription_keys(s, sub.id, [entity])


@pytest.fixture(scope="module")
def rules_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    # SQLite only: Postgres' json type refuses Infinity and NaN, so such rules cannot be stored there.
    db = Database(f"sqlite:///{tmp_path_factory.mktemp('rules') / 'pulse.db'}")
    schema.upgrade(db)
    yield db
    db.dispose()


@settings(max_examples=60, deadline=None, database=None)
@given(broken=st.lists(rules, min_size=1, max_size=4))
def test_random_rules_never_hold_back_other_users(rules_db: Database, broken: list[dict[str, Any]]) -> None:
    n = next(_subs)
    entity = f"collection:ethereum:0x{n:040x}"
    canary = {"id": "c", "kind": "relative_change", "metric": "floor", "pct": 0.2, "cooldown_s": 0}
    _seed_sub(rules_db, f"mallory{n}", entity, broken)
    _seed_sub(rules_db, f"alice{n}", entity, [canary])
    acts = DetectionActivities(rules_db, ChannelRegistry())
    at = datetime(2026, 11, 2, 12, 0, tzinfo=UTC).isoformat()
    changes = ChangeSet.of(
        [MetricChange(entity, "floor", "10", "7"), MetricChange(entity, "risk", "low", "critical")]
    )
    result = acts.detect(DetectInput(changes, at, cause=f"iso@{n}"))
    assert f"alice{n}" in {x.user_id for x in result.notifications}
