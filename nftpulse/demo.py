"""``pulse demo``: a small synthetic market streamed into a running Pulse over HTTP.

It creates a demo user who watches every demo collection (floor and volume moves, new risk) in the in-app
inbox, prints that user's API key, mints the collections and then streams market activity at a modest
rate, with a fraud finding every few seconds: significant events get a workflow of their own, so the
Temporal Web UI lists them next to the shard workflows, the floors move so the inbox fills, and every
process's metrics move. Each run uses collections of its own, so a second run is news, not duplicates.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from nftpulse.core.settings import Settings
from nftpulse.synth import Stream

#: What a subscriber of each demo collection watches. Cooldowns are off and moves small, so that a
#: minute of synthetic trading notifies; the defaults (20 %, an hour) suit real markets.
DEMO_RULES: list[dict[str, Any]] = [
    {"id": "floor-move", "kind": "relative_change", "metric": "floor", "pct": 0.02, "cooldown_s": 0},
    {"id": "volume-move", "kind": "relative_change", "metric": "volume", "pct": 0.05, "cooldown_s": 0},
    {"id": "new-risk", "kind": "new_risk", "metric": "risk", "min_level": "medium", "cooldown_s": 0},
]
MAX_BATCH = 1000  # the API's bound on one request


class DemoError(RuntimeError):
    """Something the person running the demo can fix; the message says what."""


@dataclass
class DemoConfig:
    url: str
    admin_key: str
    user_id: str = "demo"
    collections: int = 4
    tokens_per_collection: int = 25
    rate: float = 20.0  # events per second after the mints
    duration_s: float | None = 60.0  # None: until interrupted
    fraud_every_s: float = 5.0
    seed: int | None = None


@dataclass
class DemoReport:
    run: str
    user_id: str
    user_key: str | None
    collections: list[str]
    events_sent: int = 0
    fraud_findings: int = 0
    inbox: int = 0
    notes: list[str] = field(default_factory=list)


def default_url(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.api_port}"


def admin_key(settings: Settings) -> str | None:
    """The key ``pulse up`` printed: the configured bootstrap key, else the one it saved in the data dir."""
    if settings.bootstrap_admin_key:
        return settings.bootstrap_admin_key.get_secret_value()
    path = Path(settings.data_dir) / "admin.key"
    return path.read_text().strip() if path.exists() else None


def create_user_key(settings: Settings, user_id: str) -> str:
    """A key scoped to the demo user, created in the database the settings name (``pulse up``'s)."""
    from nftpulse.services import open_database
    from nftpulse.store import keys

    db = open_database(settings)
    try:
        return keys.create(db, f"demo user {user_id}", [f"user:{user_id}"])
    finally:
        db.dispose()


def demo_contract(run: str, index: int) -> str:
    """A contract address of this run's own (40 hex digits)."""
    return "0xde30" + run + f"{index:028x}"


class Demo:
    """One demo run against the API at ``config.url``."""

    def __init__(self, config: DemoConfig, say: Callable[[str], None] = print) -> None:
        self.config = config
        self.say = say
        self.run = uuid.uuid4().hex[:8]
        seed = config.seed if config.seed is not None else random.randrange(2**32)
        self.rng = random.Random(seed)
        self.stream = Stream(
            collections=config.collections,
            tokens_per_collection=config.tokens_per_collection,
            seed=seed,
            source="demo",
        )
        self.contracts = {
            coll.contract: demo_contract(self.run, i) for i, coll in enumerate(self.stream.collections)
        }
        self.http = httpx.Client(
            base_url=config.url.rstrip("/"),
            headers={"Authorization": f"Bearer {config.admin_key}"},
            timeout=30,
        )
        self.report = DemoReport(self.run, config.user_id, None, list(self.contracts.values()))

    def close(self) -> None:
        self.http.close()

    # -- preparing ---------------------------------------------------------------------------------

    def wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                resp = self.http.get("/readyz")
                if resp.status_code == 200:
                    break
                last = f"/readyz answered {resp.status_code}: {resp.text[:200]}"
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.5)
        else:
            raise DemoError(f"no Pulse ready at {self.config.url} ({last}): start one with scripts/up")
        check = self.http.get(f"/v1/users/{self.config.user_id}")
        if check.status_code in (401, 403):
            raise DemoError(
                f"the API refused the admin key ({check.status_code}): pass the key `pulse up` printed "
                "with --api-key"
            )

    def create_user(self) -> None:
        """The demo user: in-app notifications, a budget that lets a busy minute through."""
        profile = {"preferences": {"default": ["in_app"]}, "hourly_budget": 1000}
        self._expect(self.http.put(f"/v1/users/{self.config.user_id}", json=profile), 200, "the demo user")
        for i, contract in enumerate(self.contracts.values()):
            body = {
                "target": "collection",
                "entity_key": f"collection:{self.stream.chain}:{contract}",
                "label": f"Demo collection {i + 1}",
                "rules": DEMO_RULES,
            }
            resp = self.http.post(f"/v1/users/{self.config.user_id}/subscriptions", json=body)
            self._expect(resp, 201, "a demo subscription")

    def check_user_key(self, key: str) -> bool:
        """Whether the API knows the key (it was created in the database this Pulse uses)."""
        resp = self.http.get(
            f"/v1/users/{self.config.user_id}/notifications",
            params={"limit": 1},
            headers={"Authorization": f"Bearer {key}"},
        )
        return resp.status_code == 200

    # -- streaming ---------------------------------------------------------------------------------

    def _own(self, event: dict[str, Any]) -> dict[str, Any]:
        """The synthetic event as this run's: its own ids and contracts, and the time it is sent."""
        return {
            **event,
            "id": f"{self.run}-{event['id']}",
            "contract": self.contracts[event["contract"]],
            "occurred_at": datetime.now(UTC).isoformat(),
        }

    def fraud_finding(self, like: dict[str, Any]) -> dict[str, Any]:
        """A wash-trading finding on the token of ``like``: a significant event, an Event workflow."""
        self.report.fraud_findings += 1
        return {
            **like,
            "id": f"{like['id']}-fraud",
            "type": "fraud_finding",
            "data": {
                "finding_id": f"{self.run}-f{self.report.fraud_findings}",
                "kind": "wash_trading",
                "severity": self.rng.choice(["high", "critical"]),
                "wallets": self.stream.ring,
                "evidence": {"round_trips": 3},
            },
        }

    def post(self, events: list[dict[str, Any]]) -> None:
        for start in range(0, len(events), MAX_BATCH):
            chunk = events[start : start + MAX_BATCH]
            resp = self.http.post("/v1/events", json={"events": chunk})
            while resp.status_code == 429:  # Pulse sheds load: wait as it says, then send the batch again
                time.sleep(float(resp.headers.get("retry-after", "1")))
                resp = self.http.post("/v1/events", json={"events": chunk})
            self._expect(resp, 202, "a batch of events")
            self.report.events_sent += len(chunk)

    def mint(self) -> None:
        self.post([self._own(e) for e in self.stream.mints()])

    def stream_market(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Activity at ``rate`` events/s in half-second batches, a fraud finding every few seconds."""
        tick_s = 0.5
        per_tick = max(1, round(self.config.rate * tick_s))
        started = time.monotonic()
        next_fraud = started + min(2.0, self.config.fraud_every_s)
        next_note = started + 10
        activity = self.stream.activity()
        while not should_stop():
            now = time.monotonic()
            if self.config.duration_s is not None and now - started >= self.config.duration_s:
                break
            batch = [self._own(next(activity)) for _ in range(per_tick)]
            if now >= next_fraud:
                batch.append(self.fraud_finding(batch[-1]))
                next_fraud = now + self.config.fraud_every_s
            self.post(batch)
            if now >= next_note:
                self.say(
                    f"{self.report.events_sent} events sent ({self.report.fraud_findings} fraud findings), "
                    f"{self.inbox_count()} notifications in {self.config.user_id}'s inbox"
                )
                next_note = now + 10
            time.sleep(max(0.0, tick_s - (time.monotonic() - now)))

    def inbox_count(self) -> int:
        resp = self.http.get(f"/v1/users/{self.config.user_id}/notifications", params={"limit": 1})
        self._expect(resp, 200, "the demo user's inbox")
        return int(resp.json()["unread_count"])

    def _expect(self, resp: httpx.Response, status: int, what: str) -> None:
        if resp.status_code != status:
            raise DemoError(
                f"{what}: {resp.request.method} {resp.request.url.path} answered "
                f"{resp.status_code}: {resp.text[:500]}"
            )


def run_demo(
    config: DemoConfig,
    *,
    user_key: Callable[[str], str] | None = None,
    say: Callable[[str], None] = print,
    should_stop: Callable[[], bool] = lambda: False,
) -> DemoReport:
    """Prepare the demo user, print its key, mint and stream; returns what was done.

    ``user_key`` creates the demo user's key (given the user id); without it, or when the API does not
    know the key it made, the inbox is read with the admin key."""
    demo = Demo(config, say)
    try:
        demo.wait_ready()
        demo.create_user()
        if user_key is not None:
            try:
                key = user_key(config.user_id)
            except Exception as exc:  # the database may not be reachable from here; the demo goes on
                demo.report.notes.append(f"no demo user key: {exc}")
            else:
                if demo.check_user_key(key):
                    demo.report.user_key = key
                else:
                    demo.report.notes.append(
                        "the demo user's key was made in a database this Pulse does not use "
                        "(set PULSE_DATABASE_URL or PULSE_DATA_DIR as for `pulse up`)"
                    )
        if demo.report.user_key:
            say(f"demo user {config.user_id!r}, API key (shown once): {demo.report.user_key}")
        for note in demo.report.notes:
            say(note)
        say(f"minting {len(demo.contracts)} collections of {config.tokens_per_collection} tokens")
        demo.mint()
        length = "until Ctrl-C" if config.duration_s is None else f"for {config.duration_s:g} s"
        say(
            f"streaming about {config.rate:g} events/s {length}, a fraud finding every "
            f"{config.fraud_every_s:g} s"
        )
        try:
            demo.stream_market(should_stop)
        except KeyboardInterrupt:
            say("stopped")
        demo.report.inbox = demo.inbox_count()
        return demo.report
    finally:
        demo.close()
