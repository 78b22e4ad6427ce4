"""The web page in headless Chromium against a real uvicorn server on a free loopback port:
results with <img> elements and the applied constraints render; a screenshot is saved to
tests/artifacts/. Skipped when Debian's ``chromium`` is not installed
(``apt-get install -y chromium``)."""

from __future__ import annotations

import html
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from index_helpers import sample_index

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SERVER_START_S = 20  # seconds to wait for uvicorn to answer /health
BROWSER_TIMEOUT_S = 90  # seconds one headless chromium run may take

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get update && apt-get install -y chromium)"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, sample_catalog_dir):
    import uvicorn

    from vlsearch.serving.app import create_app

    index_dir = sample_index(tmp_path_factory, sample_catalog_dir)[0]
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(index_dir), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_S
    while True:
        try:
            urllib.request.urlopen(f"{base}/health", timeout=2).read()
            break
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail("uvicorn did not start")
            time.sleep(0.1)
    yield base
    srv.should_exit = True
    thread.join(10)


def _chromium(tmp_path: Path, url: str, *mode: str) -> subprocess.CompletedProcess:
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900",
            "--virtual-time-budget=5000", *mode, url]
    return subprocess.run(args, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, cwd=tmp_path,
                          check=False)


def test_page_renders_results_images_and_constraints(server, tmp_path):
    url = f"{server}/?q=nike+shoes"
    dom = _chromium(tmp_path, url, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = html.unescape(dom.stdout)
    assert page.count('class="card result"') > 0, page[:3000]
    assert page.count("<img ") >= page.count('class="card result"')
    assert "/products/" in page and "/image" in page
    assert 'data-field="brand"' in page and "brand=Nike" in page  # the applied constraint chip
    assert 'aria-label="remove brand=Nike"' in page  # removable
    assert "embedding" in page and "qid" in page

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "webpage-nike-shoes.png"
    run = _chromium(tmp_path, url, f"--screenshot={shot}")
    assert run.returncode == 0, run.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 5000


def test_page_with_constraint_switched_off(server, tmp_path):
    dom = _chromium(tmp_path, f"{server}/?q=nike+shoes&off=brand", "--dump-dom")
    page = html.unescape(dom.stdout)
    assert 'class="card result"' in page and 'data-field="brand"' not in page
    assert "brand (off)" in page


def test_page_shows_a_relaxed_constraint(server, tmp_path):
    """A query whose understood constraints match nothing together: the page says which one
    it dropped, and shows the results without it."""
    import json
    import urllib.parse

    def relaxed(text: str) -> list:
        url = f"{server}/search?" + urllib.parse.urlencode({"q": text, "k": 1})
        return json.loads(urllib.request.urlopen(url, timeout=30).read())["relaxed"]

    text = next(f"{g} {c}" for g in ("girls", "boys", "kids", "men", "women")
                for c in ("backpacks", "watches", "heels", "kurtas", "sarees") if relaxed(f"{g} {c}"))
    page = html.unescape(_chromium(tmp_path, f"{server}/?q={text.replace(' ', '+')}", "--dump-dom").stdout)
    assert 'class="chip relaxed"' in page and "(no match)" in page and "no exact match for" in page
    assert 'class="card result"' in page
