"""A revoked key stops working within seconds, and the live streams it opened end."""

from __future__ import annotations

import asyncio
import time

import httpx

from nftpulse.api.app import create_app
from nftpulse.core.settings import Settings
from nftpulse.store import keys
from nftpulse.store.cache import NoCache
from nftpulse.store.db import Database


async def test_revocation_ends_open_inbox_streams_and_refuses_the_key(db: Database) -> None:
    app = create_app(Settings(), db, NoCache(), None)
    key = keys.create(db, "ada's phone", ["user:ada"])
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://pulse.test") as http,
    ):
        assert (await http.get("/v1/users/ada/notifications", headers=headers)).status_code == 200

        async def revoke_soon() -> float:
            await asyncio.sleep(1.0)
            assert await asyncio.to_thread(keys.revoke, db, keys.handle(key, keys.pepper_of(db))) == 1
            return time.monotonic()

        revoking = asyncio.create_task(revoke_soon())
        # Asked to stay open a minute; the revocation must end it within a few seconds.
        resp = await asyncio.wait_for(
            http.get("/v1/users/ada/notifications/stream?max_s=60", headers=headers), timeout=30
        )
        ended = time.monotonic() - await revoking
        assert resp.status_code == 200
        assert ended < 4, f"the stream outlived its key's revocation by {ended:.1f}s"

        # The key itself: refused within the cache's few seconds.
        deadline = time.monotonic() + 5
        while (await http.get("/v1/users/ada/notifications", headers=headers)).status_code != 401:
            assert time.monotonic() < deadline, "a revoked key still works after 5 s"
            await asyncio.sleep(0.2)
