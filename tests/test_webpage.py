"""The web page in headless Chromium against a real uvicorn server on a free loopback port:
results with <img> elements and the applied constraints render; a screenshot is saved to
tests/artifacts/. Skipped when Debian's ``chromium`` is not installed
(``apt-get install -y chromium``)."""

from __future__ import annotations

import html
import json
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
    assert 'class="card result"' in page and 'class="chip auto" data-field="brand"' not in page
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


@pytest.fixture()
def browser(tmp_path):
    from cdp import Browser

    b = Browser(CHROMIUM, tmp_path / "cdp-profile")
    yield b
    b.close()


CARDS = "document.querySelectorAll('.card.result')"


def test_debugging_page_scores_facets_filter_pagination_and_detail(server, browser):
    """Driven like a user (clicks through the DevTools protocol): per-channel scores and Modal
    Adaptation weights on the cards, facet counts over the results, a facet click adds the
    filter, next page, the product detail view; screenshot to tests/artifacts/."""
    browser.goto(f"{server}/?q=men")
    browser.wait_for(f"{CARDS}.length === 24")
    status = browser.evaluate("document.getElementById('status').textContent")
    assert "qid" in status and ("hit" in status or "miss" in status)
    first = browser.evaluate(f"{CARDS}[0].innerText")
    assert "#1 · id " in first and "fused" in first and ("cos " in first or "bm25 " in first)
    assert browser.evaluate("document.querySelectorAll('.card.result .weight').length") >= 24
    weights = browser.evaluate("[...document.querySelectorAll('.card.result')[0].querySelectorAll('.weight .value')]"
                               ".map(e => parseFloat(e.textContent))")
    assert abs(sum(weights) - 1) < 0.02  # Modal Adaptation weights sum to one

    # facets count the current results; clicking one adds it as a filter
    facet = browser.evaluate("(() => { const b = document.querySelector('.facet-group[data-field=\"brand\"] .facet');"
                             " return [b.dataset.value, parseInt(b.querySelector('.count').textContent)]; })()")
    brand, count = facet
    on_page = browser.evaluate(f"[...{CARDS}].filter(c => c.querySelector('.meta').textContent"
                               f".startsWith({json.dumps(brand)} + ' ·')).length")
    assert count == on_page > 0

    # pagination: the next page starts at #25 and shows other products
    page_one = browser.evaluate(f"[...{CARDS}].map(c => c.dataset.id)")
    browser.evaluate("document.getElementById('next').click()")
    browser.wait_for(f"{CARDS}.length > 0 && {CARDS}[0].innerText.startsWith('#25')")
    assert "offset=24" in browser.evaluate("location.search")
    assert not set(browser.evaluate(f"[...{CARDS}].map(c => c.dataset.id)")) & set(page_one)

    # facets now count page two's results, which need not hold page one's brand: click one of its own
    brand = browser.evaluate("(() => { const b = document.querySelector('.facet-group[data-field=\"brand\"] .facet');"
                             " b.click(); return b.dataset.value; })()")
    browser.wait_for(f"document.querySelector('.chip.filter[data-field=\"brand\"]') !== null && "
                     f"{CARDS}.length > 0 && {CARDS}[0].innerText.startsWith('#1')")
    assert "filter=brand" in browser.evaluate("decodeURIComponent(location.search)")
    brands = browser.evaluate(f"[...{CARDS}].map(c => c.querySelector('.meta').textContent.split(' · ')[0])")
    assert set(brands) == {brand}

    # product detail view
    browser.evaluate(f"{CARDS}[0].click()")
    browser.wait_for("!document.getElementById('detail').hidden && document.querySelector('#detail h2') !== null")
    detail = browser.evaluate("document.getElementById('detail').innerText")
    assert "id " in detail and "Modal Adaptation weights" in detail and "gender" in detail
    assert "product=" in browser.evaluate("location.search")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = browser.screenshot(ARTIFACTS / "webpage-debugging.png")
    assert shot.stat().st_size > 5000


def test_page_says_when_it_corrected_the_spelling_or_found_nothing(server, browser):
    browser.goto(f"{server}/?q=nkie+shoos")
    browser.wait_for("document.querySelector('.notice.corrected') !== null")
    notice = browser.evaluate("document.querySelector('.notice.corrected').innerText")
    assert "showing results for nike shoes" in notice and 'search instead for "nkie shoos"' in notice
    browser.evaluate("document.getElementById('search-as-typed').click()")
    browser.wait_for("document.querySelector('.notice.corrected') === null && "
                     "location.search.includes('spell=false')")
    browser.goto(f"{server}/?q=%E8%BF%9E%E8%A1%A3%E8%A3%99")  # 连衣裙: no product mentions it
    browser.wait_for("document.querySelector('.notice.unknown, .notice.empty') !== null")
    assert "连衣裙" in browser.evaluate("document.getElementById('notices').innerText")
