"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) with their assets served by the API itself.

FastAPI's own pages load their JavaScript and CSS from a CDN, so on a machine without internet they render
blank. The assets come from the installed ``fastapi-standalone-docs`` package: Swagger UI's bundle and
stylesheet, FastAPI's favicon, and ReDoc's standalone bundle patched to load its logo from beside the page
(``<page>/logo-mini.svg``) instead of Redocly's CDN. Only its files are used (its ``StandaloneDocs`` patches
FastAPI globally); the pages are FastAPI's.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
ASSETS_URL = "/docs-assets"
ASSET_NAMES = (
    "swagger/swagger-ui-bundle.js",
    "swagger/swagger-ui.css",
    "redoc/redoc.standalone.js",
    "redoc/logo-mini.svg",
    "fastapi/favicon.png",
)


def assets_dir() -> Path:
    """The installed package's folder of assets; fails at start-up, not on the first page view, if an
    asset is missing."""
    folder = Path(str(files("fastapi_standalone_docs") / "static"))
    missing = [name for name in ASSET_NAMES if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"fastapi-standalone-docs' assets are incomplete, missing {missing} in {folder}")
    return folder


def install(app: FastAPI) -> None:
    """Serve the documentation pages; the app must be created with ``docs_url=None, redoc_url=None``."""
    folder = assets_dir()
    app.mount(ASSETS_URL, StaticFiles(directory=folder), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/fastapi/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/fastapi/favicon.png",
            # Google Fonts is a CDN too; ReDoc falls back to the system's fonts.
            with_google_fonts=False,
        )

    @app.get(f"{REDOC_URL}/logo-mini.svg", include_in_schema=False)
    async def redoc_logo() -> FileResponse:
        return FileResponse(folder / "redoc" / "logo-mini.svg", media_type="image/svg+xml")
