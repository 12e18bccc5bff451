"""The operator page in a real headless browser (Debian's Chromium, driven by Playwright):
feeds and their health, the defence stories with evidence and outlets, the chart, and the
"Fetch now" button queuing a real poll through Redis.  A screenshot is kept in
test-artifacts/operator-page.png."""

from __future__ import annotations

import os
import re
import shutil
from datetime import datetime, timezone

import pytest

from tests.support.api import api_server, sample_site_database
from tests.support.services import drop_queued_tasks
from tests.support.proc import ROOT

pytestmark = pytest.mark.services

CHROMIUM = os.environ.get("NEWSWORKER_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = ROOT / "test-artifacts" / "operator-page.png"
TOKEN = "operator-token-3b9d"
SEED_TITLE = "Azerbaijani Defence Minister meets Turkish delegation"
# A feed name is whatever someone typed or a feed said: it must show as text, never run.
HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>Broken & feed'


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium from the system packages; never a downloaded browser, never a skip."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        found = shutil.which("chromium")
        pytest.fail(f"Chromium not found at {CHROMIUM}{f' (there is one at {found}: set NEWSWORKER_CHROMIUM)' if found else ''}: "
                    "install it (Debian/Ubuntu: apt-get install chromium)", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]'", pytrace=False)
    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory, redis_url):
    tmp = tmp_path_factory.mktemp("page")
    with sample_site_database(tmp, extra_feed_name=HOSTILE) as url, \
            api_server(url, tmp, api_token=TOKEN, broker_url=redis_url) as server:
        yield server
    drop_queued_tasks(redis_url)        # the poll the "Fetch now" click queued


def test_operator_page_in_chromium(api, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []           # script errors and CSP violations show up here
    expected = re.compile(r"Failed to load resource: .* status of (401|409) ")   # the refused clicks below
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" and not expected.match(m.text) else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    response = page.goto(api.base_url + "/")
    assert response.status == 200
    assert "script-src 'nonce-" in response.headers["content-security-policy"]

    # Feeds and their health, the failing one first.
    rows = page.locator("tr.feed")
    assert rows.count() == 4
    broken = rows.nth(0)
    assert broken.locator("td").nth(1).inner_text().startswith(HOSTILE)   # shown as text ...
    assert page.evaluate("window.pwned") is None                           # ... and nothing ran
    assert broken.locator(".badge").first.inner_text() == "permanent"
    assert "HTTP 404" in broken.locator("td.err").inner_text()
    healthy = page.locator("tr.feed", has_text="feeds/sport.atom")
    assert healthy.locator(".badge").first.inner_text() == "ok"

    # The defence stories with their evidence and every outlet and feed that carried them.
    stories = page.locator("#defence .story")
    assert stories.count() == 2
    seed = page.locator("#defence .story", has_text=SEED_TITLE)
    assert "Colonel General" in seed.locator(".evidence").inner_text()
    assert seed.locator(".outlets").inner_text() == "Caspian Daily Monitor"
    assert "Regional Wire Digest" in seed.locator(".feeds").inner_text()

    # The chart: 14 days of two bars; today's holds the five stories, two of them defence.
    assert page.locator("#chart rect.bar.stories").count() == 14
    today = datetime.now(timezone.utc).date().isoformat()
    assert page.locator(f'#chart rect.bar.stories[data-day="{today}"]').get_attribute("data-count") == "5"
    assert page.locator(f'#chart rect.bar.defence[data-day="{today}"]').get_attribute("data-count") == "2"

    # "Fetch now": refused without the token, queued with it, then already queued.
    button = healthy.locator("button.fetch")
    outcome = healthy.locator(".outcome")
    button.click()
    outcome.filter(has_text="token refused").wait_for(timeout=10_000)
    page.fill("#token", TOKEN)
    button.click()
    outcome.filter(has_text="queued: task").wait_for(timeout=10_000)
    assert re.fullmatch(r"queued: task [0-9a-f-]{36}", outcome.inner_text())
    button.click()
    outcome.filter(has_text="already queued").wait_for(timeout=10_000)
    assert outcome.inner_text() == "already queued"
    assert "is already queued or being polled" in outcome.get_attribute("title")      # the API's detail

    # The token stays in this browser; the page now shows the feed as queued.
    page.reload()
    assert page.input_value("#token") == TOKEN
    assert page.locator("tr.feed", has_text="feeds/sport.atom").locator(".badge", has_text="queued").count() == 1
    healthy = page.locator("tr.feed", has_text="feeds/sport.atom")
    healthy.locator("button.fetch").click()
    healthy.locator(".outcome").filter(has_text="already queued").wait_for(timeout=10_000)

    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert not problems, problems
    page.close()
