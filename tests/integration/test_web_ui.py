"""The page at `/`, driven in Debian's Chromium by Playwright against a real service on loopback.

Screenshots land in reports/ui/ (MARQUEE_UI_ARTIFACTS overrides): CI keeps them as artifacts.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    REPO,
    free_port,
    python,
    start,
    stop,
    wait_for_http,
)

TOKEN = "ui-test-token-0123456789"
EXPERIMENT = {
    "name": "als-vs-itemcf",
    "salt": "ui",
    "arms": [
        {"name": "control", "model": "als", "weight": 50},
        {"name": "treatment", "model": "itemcf", "weight": 50},
    ],
}
ARTIFACTS = Path(os.environ.get("MARQUEE_UI_ARTIFACTS", REPO / "reports" / "ui"))
TIMEOUT_MS = 15_000

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
)
expect = sync_api.expect
expect.set_options(timeout=TIMEOUT_MS)
if not Path(CHROMIUM).exists():
    pytest.skip(
        f"{CHROMIUM} is missing (apt-get install -y chromium; `make test` installs it)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def served(two_releases: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """v0.1 and v0.2 in a private registry (the operator test promotes), an A/B experiment."""
    root = tmp_path_factory.mktemp("ui") / "registry"
    shutil.copytree(two_releases["root"], root)
    # a fresh control plane: no pointer (the newest release serves), no experiment yet, whatever
    # other tests recorded in the shared registry before it was copied
    shutil.rmtree(root / "control", ignore_errors=True)
    port = free_port()
    log = root.parent / "service.log"
    env = {
        "REC_ADMIN_TOKEN": TOKEN,
        "REC_EXPERIMENT": json.dumps(EXPERIMENT),
        "REC_CANDIDATES": "v0.1",
        "REC_SYNC_SECONDS": "0.5",
    }
    proc = start(
        [python(), "-m", "recommender", "--registry", root.as_uri(), "--port", str(port)],
        env=env,
        log=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/readyz", timeout=60, proc=proc)
        yield base
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Page:
    """A fresh tab that records console errors and uncaught exceptions."""

    def __init__(self, browser, base: str, width: int = 1280, height: int = 900) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.errors: list[str] = []
        self.page.on(
            "console", lambda m: self.errors.append(m.text) if m.type == "error" else None
        )
        self.page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        self.base = base

    def goto(self, fragment: str = "") -> None:
        self.page.goto(f"{self.base}/{fragment}")

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser, served: str) -> Iterator[Page]:
    page = Page(browser, served)
    yield page
    page.close()


def _lists(page) -> dict[str, list[str]]:
    """Each rendered list's kind -> the 'why' line of every item."""
    out = {}
    for card in page.locator("article.list").all():
        out[card.get_attribute("data-kind")] = card.locator("li .why").all_inner_texts()
    return out


def test_try_it_search_pick_three_and_compare_four_kinds(tab: Page) -> None:
    page = tab.page
    tab.goto()
    # Keyboard only: type a query, Enter submits, Enter on each "Add" button picks a movie.
    page.locator("#q").focus()
    page.keyboard.type("movie 1")
    page.keyboard.press("Enter")
    expect(page.locator("#search-status")).to_contain_text("matching “movie 1”")
    results = page.locator("#search-results li")
    assert all("movie 1" in t.lower() for t in results.locator(".title").all_inner_texts())
    for i in range(3):
        results.nth(i).get_by_role("button", name="Add").focus()
        page.keyboard.press("Enter")
    assert page.locator("#picked li").count() == 3
    page.locator("#picked li select").first.select_option("3")  # rate one of them
    page.get_by_role("button", name="Recommend for these movies").click()
    page.locator("article.list li").nth(4 * 10 - 1).wait_for()

    lists = _lists(page)
    assert sorted(lists) == ["als", "itemcf", "ncf", "popularity"]
    assert all(len(whys) == 10 and all(whys) for whys in lists.values()), lists
    # item-based kinds name the picked movies; NCF cannot fold in a history and says so
    picked = page.locator("#picked li .title").all_inner_texts()
    assert any(any(p in why for p in picked) for why in lists["itemcf"])
    assert any(any(p in why for p in picked) for why in lists["als"])
    assert all(why.startswith("popular right now") for why in lists["popularity"])
    assert all(why.startswith("popular right now") for why in lists["ncf"])
    meta = page.locator("article.list .meta").all_inner_texts()
    assert all("release v0.2" in m for m in meta)
    # year and genres come from /movies (v0.2's catalogue: "Movie N", genre Drama, no year)
    assert page.locator("article.list li").first.locator(".genre").inner_text() == "Drama"
    tab.screenshot("try.png")
    assert tab.errors == []


def test_known_user_history_arm_and_lists(tab: Page) -> None:
    page = tab.page
    tab.goto("#try")
    want = page.request.get(f"{tab.base}/users/7/history?limit=20").json()
    assert want["known"] and want["arm"]["name"] in ("control", "treatment")
    page.get_by_label("Or enter a known user id").fill("7")
    page.get_by_role("button", name="Show this user").click()
    history = page.locator("#user-view ul[aria-label=history] li .title")
    history.first.wait_for()
    assert history.all_inner_texts() == [m["title"] for m in want["movies"]]
    meta = page.locator("#user-view .meta").inner_text()
    assert f"{want['total']} movies in release v0.2" in meta
    assert f"A/B arm {want['arm']['name']} ({want['arm']['model']})" in meta
    page.locator("article.list").nth(4).locator("li").nth(9).wait_for()
    cards = page.locator("article.list")
    assert cards.count() == 5  # the user's arm first, then the four kinds
    assert "list arm" in cards.first.get_attribute("class")
    assert cards.first.locator("h4").inner_text().startswith("arm ")
    lists = _lists(page)
    assert all(len(whys) == 10 and all(whys) for whys in lists.values()), lists
    assert any(why.startswith("because of Movie ") for why in lists["itemcf"])
    assert tab.errors == []


def test_operator_view_read_only_then_with_the_token(tab: Page) -> None:
    page = tab.page
    tab.goto("#operate")
    summary = page.locator("#op-summary")
    summary.get_by_text("v0.2").first.wait_for()
    assert "in sync" in summary.inner_text()
    releases = page.locator("#op-releases tbody tr")
    releases.nth(1).wait_for()
    assert releases.count() == 2  # v0.2 active, v0.1 loaded as a candidate
    assert "ndcg@10" in page.locator("#op-releases").inner_text()
    assert "control" in page.locator("#op-experiment").inner_text()

    # Without a token nothing is sent.
    page.get_by_label("Version").fill("v0.1")
    page.get_by_role("button", name="Promote").click()
    status = page.locator("#admin-status")
    expect(status).to_contain_text("Type the admin token first")
    # A wrong token: the service refuses (the browser logs that 401 as a console error).
    page.get_by_label("Admin token").fill("wrong-token-wrong-token")
    page.get_by_role("button", name="Use token").click()
    page.get_by_role("button", name="Promote").click()
    expect(status).to_contain_text("refused (401)")
    assert [e for e in tab.errors if "401" not in e] == []
    tab.errors.clear()

    # The right token: promote v0.1, then move the experiment's weights.
    page.get_by_label("Admin token").fill(TOKEN)
    page.get_by_role("button", name="Use token").click()
    assert page.evaluate("sessionStorage.getItem('marquee.adminToken')") == TOKEN
    page.get_by_label("Reason").first.fill("ui test: roll back")
    page.get_by_role("button", name="Promote").click()
    expect(status).to_contain_text("promoted v0.1")
    expect(page.locator("#op-history")).to_contain_text("ui test: roll back")
    page.get_by_label("Weight of control").fill("20")
    page.get_by_label("Weight of treatment").fill("80")
    page.get_by_role("button", name="Set weights").click()
    expect(status).to_contain_text("weights set: control 20, treatment 80")
    # the replica applies both changes when it next polls the control plane
    expect(page.locator("#op-experiment")).to_contain_text("control 20 / treatment 80")
    expect(page.locator("#op-summary .card").first).to_contain_text("v0.1")
    tab.screenshot("operate.png")
    assert tab.errors == []


def test_readable_at_phone_width(browser, served: str) -> None:
    tab = Page(browser, served, width=375, height=740)
    try:
        for fragment in ("#try", "#operate"):
            tab.goto(fragment)
            tab.page.locator("#release-line").get_by_text("serving release").wait_for()
            if fragment == "#operate":
                tab.page.locator("#op-releases tbody tr").first.wait_for()
            overflow = tab.page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{fragment}: {overflow}px wider than the phone"
            tab.screenshot(f"{fragment[1:]}-phone.png")
        assert tab.errors == []
    finally:
        tab.close()
