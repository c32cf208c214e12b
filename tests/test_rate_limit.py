"""Per-key rate limits: past its burst a key gets 429 with Retry-After, other keys are unaffected, and
the bucket refills at the configured rate."""

from __future__ import annotations

import httpx

from nftpulse.api.app import create_app
from nftpulse.api.deps import KeyRateLimiter
from nftpulse.core.settings import Settings
from nftpulse.store import keys
from nftpulse.store.cache import NoCache
from nftpulse.store.db import Database


async def test_a_key_past_its_burst_gets_429_with_retry_after(db: Database) -> None:
    app = create_app(Settings(key_rate_per_s=0.5, key_rate_burst=3), db, NoCache(), None)
    busy = {"Authorization": f"Bearer {keys.create(db, 'busy', ['admin'])}"}
    calm = {"Authorization": f"Bearer {keys.create(db, 'calm', ['admin'])}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://pulse.test"
    ) as http:
        codes = [(await http.get("/v1/ops/failures", headers=busy)).status_code for _ in range(3)]
        assert 429 not in codes, codes
        limited = await http.get("/v1/ops/failures", headers=busy)
        assert limited.status_code == 429, limited.text
        assert int(limited.headers["retry-after"]) >= 1
        assert (await http.get("/v1/ops/failures", headers=calm)).status_code != 429


def test_the_bucket_refills_at_the_rate() -> None:
    limiter = KeyRateLimiter(rate=10.0, burst=2)
    assert limiter.wait_s(1, now=0.0) == 0 and limiter.wait_s(1, now=0.0) == 0
    assert limiter.wait_s(1, now=0.0) == 0.1
    assert limiter.wait_s(1, now=0.1) == 0
    assert KeyRateLimiter(rate=0.0, burst=1).wait_s(1, now=0.0) == 0  # 0: no limit
