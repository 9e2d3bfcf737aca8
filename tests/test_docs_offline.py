"""/docs and /redoc render in a real browser with no way out to the internet.

Headless Chromium loads the pages from a real server under a made-up host name
(`inscale.test`, mapped to the server's loopback address) while every other host name is made
unresolvable, so the test is air-gapped even on a machine that has internet: a page that still
pulled Swagger UI from a CDN would render blank here. Chromium's network log lists every URL
the page asked for; the browser's own background requests (update checks, network time,
accounts), which some Chromium builds send whatever the flags, are told apart by their
initiator.
"""

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest
from PIL import Image

from support.server import ServerProcess

HOST = "inscale.test"  # reserved for testing (RFC 2606): never a real site
INFER = "/v2/models/{name}/infer"
CHROMIUM_TIMEOUT_S = 120
# ReDoc's sidebar shows its vendor's logo from their CDN; offline the request fails and the
# image removes itself (it has an error handler), so that is the one outside URL we accept.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
SWAGGER_POST_GREEN = (73, 204, 144)  # the colour Swagger UI draws POST operations in
SIZE = (1280, 2000)


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in ("chromium-headless-shell", "chromium"):
        found = shutil.which(name)
        if found is not None:
            return found
    pytest.skip(
        "Chromium is not installed: `scripts/dev test` installs Debian's chromium-headless-shell "
        "(or chromium) with apt, which this machine does not have"
    )


def browse(
    chromium: str, server: ServerProcess, page: str, tmp_path: Path, *action: str
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run Chromium once on `page`; its result and every URL it requested."""
    assert server.port is not None
    profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp_path))  # fresh each run
    net_log = profile / "netlog.json"
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--host-resolver-rules=MAP {HOST} 127.0.0.1, MAP * ~NOTFOUND",
        f"--log-net-log={net_log}",
        "--virtual-time-budget=10000",  # let the page's scripts fetch the schema and render
        *action,
        f"http://{HOST}:{server.port}{page}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
    assert done.returncode == 0, f"chromium failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return done, requested_urls(net_log, f"http://{HOST}:{server.port}")


def requested_urls(net_log: Path, origin: str) -> set[str]:
    """Every URL a document from `origin` asked for.

    Each request's job start records its initiator: the page's origin for what the page loads
    (scripts, styles, images, fetches, wherever they point), "not an origin" for the
    navigation itself and for the browser's own traffic.
    """
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return {
        event["params"]["url"]
        for event in log["events"]
        if event["type"] == start_job and event.get("params", {}).get("initiator") == origin
    }


def outside(urls: set[str], server: ServerProcess) -> set[str]:
    ours = f"http://{HOST}:{server.port}/"
    return {url for url in urls if not url.startswith(ours)}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_pages_link_only_assets_the_server_serves(client: httpx.Client, page: str) -> None:
    html = client.get(page).text
    assert not re.search(r"(https?:)?//", html), f"{page} names an outside URL:\n{html}"
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) >= 2, f"{page} links no script or stylesheet:\n{html}"
    for asset in assets:
        reply = client.get(asset)
        assert reply.status_code == 200, f"{page} links {asset}, which answers {reply.status_code}"
        assert len(reply.content) > 1000, f"{asset} is only {len(reply.content)} bytes"


def test_swagger_ui_lists_the_operations(
    chromium: str, server: ServerProcess, tmp_path: Path
) -> None:
    done, urls = browse(chromium, server, "/docs", tmp_path, "--dump-dom")
    dom = done.stdout
    # Swagger UI's rendering, not the page template: one summary per operation, with its path.
    paths = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom))
    assert {"/predict", INFER} <= paths, f"rendered operations: {sorted(paths)}\n{dom[:3000]}"
    assert outside(urls, server) == set()
    assert f"http://{HOST}:{server.port}/openapi.json" in urls


def test_swagger_ui_screenshot_shows_the_operations(
    chromium: str, server: ServerProcess, tmp_path: Path
) -> None:
    shot = tmp_path / "docs.png"
    window = f"--window-size={SIZE[0]},{SIZE[1]}"
    browse(chromium, server, "/docs", tmp_path, f"--screenshot={shot}", window)
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), f"{shot} is not a PNG"
    with Image.open(shot) as image:
        assert image.size == SIZE
        colours = image.convert("RGB").getcolors(maxcolors=SIZE[0] * SIZE[1])
    assert colours is not None
    pixels = {colour: count for count, colour in colours}
    # A page whose scripts did not load is plain white; the rendered list draws each POST
    # operation as a green block (about 2,000 pixels each at this size).
    drawn = SIZE[0] * SIZE[1] - pixels.get((255, 255, 255), 0)
    assert drawn > 0.02 * SIZE[0] * SIZE[1], f"{shot}: only {drawn} non-white pixels"
    assert pixels.get(SWAGGER_POST_GREEN, 0) > 2000, f"{shot}: no POST operation drawn"


def test_redoc_lists_the_operations(chromium: str, server: ServerProcess, tmp_path: Path) -> None:
    done, urls = browse(chromium, server, "/redoc", tmp_path, "--dump-dom")
    dom = done.stdout
    # The template holds only an empty <redoc> element; the paths appear once ReDoc rendered.
    assert "/predict" in dom and INFER in dom, dom[:3000]
    assert outside(urls, server) <= {REDOC_LOGO}
    assert 'alt="redocly logo"' not in dom, "the unreachable logo left a broken image"
