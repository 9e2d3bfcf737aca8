"""The API docs pages (Swagger UI at /docs, ReDoc at /redoc), with every asset served by us.

FastAPI's built-in pages load their JavaScript, CSS and favicon from public CDNs, so in an
air-gapped cluster (common for model serving) they render as a blank page. The
`fastapi-offline` package ships those same files (Swagger UI 5, ReDoc 2 and FastAPI's
favicon) as package data; we mount them under /docs/assets and build both pages with
FastAPI's own HTML helpers pointed at the mount. The app must be created with
`docs_url=None, redoc_url=None` so FastAPI's CDN pages do not shadow these.
"""

from importlib import resources
from pathlib import Path

# Imported, not looked up by name when the app is built, so an environment without it (an
# image whose lock file lacks it) fails at import, where the image build's smoke test looks.
import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs/assets"

_SWAGGER_JS = "swagger-ui-bundle.js"
_SWAGGER_CSS = "swagger-ui.css"
_REDOC_JS = "redoc.standalone.js"
_FAVICON = "favicon.png"


def install_docs(app: FastAPI) -> None:
    """Serve /docs and /redoc from local assets; nothing on either page leaves the server."""
    openapi_url = app.openapi_url
    if openapi_url is None:
        return  # no schema, nothing to document
    app.mount(ASSETS_URL, StaticFiles(directory=_assets_dir()), name="docs-assets")
    swagger_title = f"{app.title} - Swagger UI"
    redoc_title = f"{app.title} - ReDoc"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root_path(request)
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=swagger_title,
            swagger_js_url=f"{root}{ASSETS_URL}/{_SWAGGER_JS}",
            swagger_css_url=f"{root}{ASSETS_URL}/{_SWAGGER_CSS}",
            swagger_favicon_url=f"{root}{ASSETS_URL}/{_FAVICON}",
            # No OAuth2 flow: inscale has no security schemes, so no redirect page is needed.
            oauth2_redirect_url=None,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = _root_path(request)
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=redoc_title,
            redoc_js_url=f"{root}{ASSETS_URL}/{_REDOC_JS}",
            redoc_favicon_url=f"{root}{ASSETS_URL}/{_FAVICON}",
            with_google_fonts=False,  # ReDoc falls back to local fonts; no fonts CDN
        )


def _root_path(request: Request) -> str:
    """The prefix a reverse proxy mounts us under (`--root-path`), as FastAPI's own pages use."""
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def _assets_dir() -> Path:
    """The folder of Swagger UI and ReDoc files inside the installed `fastapi-offline`.

    Checked when the app is built, so a release that moves or renames a file fails at start
    with a message instead of serving a blank page.
    """
    folder = Path(str(resources.files(fastapi_offline).joinpath("static")))
    missing = [
        name
        for name in (_SWAGGER_JS, _SWAGGER_CSS, _REDOC_JS, _FAVICON)
        if not (folder / name).is_file()
    ]
    if missing:
        raise RuntimeError(
            f"the API docs assets {', '.join(missing)} are missing from {folder}: "
            "reinstall inscale's dependency fastapi-offline, or pin the release the lock names"
        )
    return folder
