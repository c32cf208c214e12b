"""/docs and /redoc work without internet: their pages reference only the API's own asset URLs, and the API
serves those assets."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from nftpulse.api.app import create_app
from nftpulse.core.settings import Settings
from nftpulse.store import schema
from nftpulse.store.cache import NoCache
from nftpulse.store.db import Database

CONTENT_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
    ".svg": ("image/svg+xml",),
}


@pytest_asyncio.fixture
async def http(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    url = f"sqlite:///{tmp_path / 'docs.db'}"
    db = Database(url)
    schema.upgrade(db)
    app = create_app(Settings(database_url=url, data_dir=tmp_path), db, NoCache(), None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://pulse.test") as c:
        yield c
    db.dispose()


def asset_urls(html: str) -> list[str]:
    """Every URL a page loads: script and stylesheet sources, icons, and the OpenAPI document."""
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    urls += re.findall(r"""url:\s*["']([^"']+)["']""", html)
    urls += re.findall(r"""spec-url\s*=\s*["']([^"']+)["']""", html)
    return urls


@pytest.mark.parametrize(
    ("page", "expected_assets"),
    [
        ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css"}),
        ("/redoc", {"redoc.standalone.js"}),
    ],
)
async def test_docs_pages_load_only_local_assets(
    http: httpx.AsyncClient, page: str, expected_assets: set[str]
) -> None:
    resp = await http.get(page)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    urls = asset_urls(resp.text)
    remote = [u for u in urls if re.match(r"^(https?:)?//", u)]
    assert remote == [], f"{page} loads from other hosts: {remote}"
    assert "fonts.googleapis" not in resp.text
    loaded = {u.rsplit("/", 1)[-1] for u in urls}
    assert expected_assets <= loaded, f"{page} does not load {expected_assets - loaded}: {urls}"
    assert "/openapi.json" in urls
    for url in urls:
        asset = await http.get(url)
        assert asset.status_code == 200, url
        suffix = Path(url).suffix
        if suffix in CONTENT_TYPES:
            assert asset.headers["content-type"].split(";")[0] in CONTENT_TYPES[suffix], url
        if suffix == ".js":
            # The real bundles, not an error page: each is over a megabyte.
            assert len(asset.content) > 500_000, url
            # ReDoc's bundle loads its logo from beside the page, not from Redocly's CDN.
            assert b"cdn.redoc.ly" not in asset.content, url


async def test_redoc_logo_is_served_beside_the_page(http: httpx.AsyncClient) -> None:
    logo = await http.get("/redoc/logo-mini.svg")
    assert logo.status_code == 200
    assert logo.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in logo.content
