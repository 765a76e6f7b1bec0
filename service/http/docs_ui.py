"""/docs (Swagger UI) and /redoc with every asset served by the service itself: they work without internet.

Stock FastAPI pages load Swagger UI and Redoc from a CDN (and the favicon from FastAPI's site), so on a machine
without internet /docs is a blank page. The assets come from the pinned PyPI package `fastapi-standalone-docs`
(pyproject.toml), installed with the service: swagger-ui-dist 5.33.1 (Apache-2.0), redoc 2.5.4 (MIT, its bundle
patched by the package to load its logo from `<page>/logo-mini.svg`) and FastAPI's favicon (MIT), each with its
licence text (served at /docs/assets/LICENSE and /redoc/redoc.standalone.js.LICENSE.txt). Only the package's
files are used, not its code (which patches FastAPI's functions process-wide). `SERVICE_DOCS_CDN=true` goes
back to FastAPI's CDN URLs.

Paths: `/docs/assets/*` (Swagger UI), `/redoc/*` (Redoc: its logo URL is relative to the page), `/favicon.png`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from service.settings import Settings

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
SWAGGER_ASSETS = "/docs/assets"
FAVICON_URL = "/favicon.png"
# Swagger UI's online validator badge would call validator.swagger.io; BaseLayout does not show it, and null
# makes sure no version of the bundle does.
SWAGGER_PARAMETERS = {"validatorUrl": None}


def assets_dir() -> Path:
    """The package's static folder (swagger/, redoc/, fastapi/), found without importing the package."""
    spec = importlib.util.find_spec("fastapi_standalone_docs")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fastapi-standalone-docs is not installed (a dependency in pyproject.toml)")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def install_docs(app: FastAPI, settings: Settings) -> None:
    """Add /docs, /redoc, their assets and /favicon.png (create the app with docs_url=None, redoc_url=None)."""
    static = assets_dir()
    local = not settings.docs_cdn

    def urls(request: Request) -> tuple[str, dict[str, str]]:
        # Behind a proxy that strips a prefix, every URL carries the request's root_path (as FastAPI's own pages).
        root = request.scope.get("root_path", "").rstrip("/")
        openapi_url = root + (app.openapi_url or "/openapi.json")
        if not local:
            return openapi_url, {}
        return openapi_url, {"favicon": root + FAVICON_URL, "js": f"{root}{SWAGGER_ASSETS}/swagger-ui-bundle.js",
                             "css": f"{root}{SWAGGER_ASSETS}/swagger-ui.css",
                             "redoc": f"{root}{REDOC_URL}/redoc.standalone.js"}

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        openapi_url, assets = urls(request)
        extra = {"swagger_js_url": assets["js"], "swagger_css_url": assets["css"],
                 "swagger_favicon_url": assets["favicon"]} if assets else {}
        return get_swagger_ui_html(openapi_url=openapi_url, title=f"{app.title} - Swagger UI",
                                   swagger_ui_parameters=SWAGGER_PARAMETERS, **extra)

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        openapi_url, assets = urls(request)
        extra = {"redoc_js_url": assets["redoc"], "redoc_favicon_url": assets["favicon"]} if assets else {}
        # Google Fonts is a third party too: the page uses the browser's fonts unless the CDN is chosen.
        return get_redoc_html(openapi_url=openapi_url, title=f"{app.title} - ReDoc", with_google_fonts=not local,
                              **extra)

    favicon = static / "fastapi" / "favicon.png"

    @app.get(FAVICON_URL, include_in_schema=False)
    async def favicon_png() -> FileResponse:
        # Also the landing page's icon, whatever SERVICE_DOCS_CDN says.
        return FileResponse(favicon, media_type="image/png", headers={"Cache-Control": "public, max-age=86400"})

    # Served in either mode: the licence texts stay reachable, and switching the setting breaks no cached page.
    app.mount(SWAGGER_ASSETS, StaticFiles(directory=static / "swagger"), name="swagger-ui-assets")
    app.mount(REDOC_URL, StaticFiles(directory=static / "redoc"), name="redoc-assets")
