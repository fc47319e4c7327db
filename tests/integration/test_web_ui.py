"""The page at `/`, driven in Debian's Chromium by Playwright against a real service on loopback.

Screenshots land in reports/ui/ (MARQUEE_UI_ARTIFACTS overrides): CI keeps them as artifacts.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from model_registry.registry import Registry
from tests.helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    REPO,
    build_release,
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
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
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
    releases = page.locator("#op-releases > tbody > tr")  # each row nests a table of its kinds
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
                tab.page.locator("#op-releases > tbody > tr").first.wait_for()
            overflow = tab.page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{fragment}: {overflow}px wider than the phone"
            tab.screenshot(f"{fragment[1:]}-phone.png")
        assert tab.errors == []
    finally:
        tab.close()


# ---- popularity bias, fairness and rating of every loaded release (issue #14) ---------------
HOSTILE = '<img src=x onerror="window.__pwned=1">'  # a group name is data, shown as text
METRIC_DIGITS = {
    "ndcg@10": 3,
    "hr@10": 3,
    "coverage@10": 3,
    "gini@10": 3,
    "long_tail@10": 3,
    "novelty@10": 2,
}
DASH = "–"


def fixed(value: float, digits: int) -> str:
    """JavaScript's Number.prototype.toFixed for the non-negative numbers manifests carry."""
    exact = Decimal(value)  # the double's exact value, rounded half up as toFixed does
    return str(exact.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def shown(value: object, digits: int) -> str:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return fixed(value, digits) if ok else DASH


def fairness_line(name: str, grouping: dict) -> str:
    """What the view should say for one grouping, computed from the manifest's full group list."""
    floor = grouping.get("min_users", 50)
    big = sorted((n, g) for n, g in grouping["groups"].items() if g["users"] >= floor)
    ratio = grouping.get("ndcg@10_max_min")
    head = f"{name} {fixed(ratio, 2)}×" if ratio is not None else f"{name} {DASH}"
    if len(big) < 2:
        return f"{head} (no two groups of ≥ {floor} users)"
    best = max(big, key=lambda ng: ng[1]["ndcg@10"])
    worst = min(big, key=lambda ng: ng[1]["ndcg@10"])
    pair = " / ".join(f"{n} {fixed(g['ndcg@10'], 3)}" for n, g in (best, worst))
    return f"{head} ({pair})"


def rating_line(manifest: dict) -> str:
    m = (manifest.get("rating") or {}).get("metrics")
    if not isinstance(m, dict):
        return f"rating (test): {DASH}"
    return (
        f"rating (test): RMSE {shown(m.get('rmse'), 4)} · MAE {shown(m.get('mae'), 4)} "
        f"vs global mean + biases RMSE {shown(m.get('baseline_rmse'), 4)} · "
        f"MAE {shown(m.get('baseline_mae'), 4)}"
    )


def check_release_row(page, manifest: dict) -> int:
    """Every kind's metrics, fairness lines and the rating line of one release's row match its
    manifest (missing values as a dash); returns how many fairness ratios were checked."""
    rows = page.locator("#op-releases > tbody > tr")
    row = rows.filter(has=page.locator("td:first-child", has_text=manifest["version"]))
    assert row.count() == 1, manifest["version"]
    ratios = 0
    for kind, info in manifest["kinds"].items():
        line = row.locator("table.metrics > tbody > tr").filter(
            has=page.locator(f'strong[data-kind="{kind}"]')
        )
        metrics = info.get("metrics") or {}
        for key, digits in METRIC_DIGITS.items():
            cell = line.locator(f'[data-metric="{key}"]')
            assert cell.inner_text() == shown(metrics.get(key), digits), (kind, key)
        fairness = info.get("fairness") or {}
        items = line.locator("li[data-grouping]")
        assert items.count() == len(fairness), kind
        if not fairness:
            assert line.locator("td").last.inner_text() == DASH
        for name, grouping in fairness.items():
            text = line.locator(f'li[data-grouping="{name}"]').inner_text()
            assert text == fairness_line(name, grouping), (kind, name)
            ratios += grouping.get("ndcg@10_max_min") is not None
    assert row.locator("p.rating").inner_text() == rating_line(manifest)
    return ratios


def bias_manifest() -> dict:
    """A release's bias, fairness and rating blocks as the trainer writes them (numbers made up;
    occupation with more groups than the view lists, one below the 50-user floor and best)."""
    occupation = {
        f"job{i:02d}": {"users": 55, "hr@10": 0.1, "ndcg@10": 0.02 + i / 997} for i in range(9)
    }
    occupation["tiny"] = {"users": 12, "hr@10": 0.5, "ndcg@10": 0.4}
    occupation[HOSTILE] = {"users": 80, "hr@10": 0.2, "ndcg@10": 0.09213}
    kinds = {}
    for n, kind in enumerate(("popularity", "itemcf", "als", "ncf")):
        metrics = {
            "ndcg@10": 0.0523 + n / 101,
            "hr@10": 0.1017 + n / 53,
            "coverage@10": 0.0511 + n / 7,
            "gini@10": 0.98674 - n / 9,
            "long_tail@10": 0.0123 + n / 11,
            "novelty@10": 1.2397 + n / 3,
        }
        if kind == "ncf":
            del metrics["novelty@10"]  # a value the manifest lacks shows as a dash
        kinds[kind] = {"params": {}, "metrics": metrics}
        if kind == "ncf":
            continue  # no fairness block at all
        kinds[kind]["fairness"] = {
            "gender": {
                "groups": {
                    "F": {"users": 273, "hr@10": 0.09, "ndcg@10": 0.052},
                    "M": {"users": 670, "hr@10": 0.1, "ndcg@10": 0.06 + n / 1000},
                },
                "min_users": 50,
                "hr@10_max_min": 1.1111,
                "ndcg@10_max_min": round((0.06 + n / 1000) / 0.052, 4),
            },
            "occupation": {
                "groups": occupation,
                "min_users": 50,
                "hr@10_max_min": 2.0,
                "ndcg@10_max_min": round(0.09213 / 0.02, 4),
            },
            "activity": {
                "groups": {q: {"users": 20, "hr@10": 0.1, "ndcg@10": 0.03} for q in ["q1", "q2"]},
                "min_users": 50,
                "hr@10_max_min": None,
                "ndcg@10_max_min": None,
            },
        }
    rating = {
        "params": {"factors": 8},
        "metrics": {
            "rmse": 1.01557,
            "mae": 0.80283,
            "n": 943,
            "baseline_rmse": 1.0443,
            "baseline_mae": 0.82592,
        },
    }
    return {"kinds": kinds, "rating": rating}


@pytest.fixture(scope="module")
def served_bias(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """One release (no training: random arrays) whose manifest has every bias block."""
    root = tmp_path_factory.mktemp("ui-bias")
    registry = (root / "registry").as_uri()
    assert build_release(registry, manifest=bias_manifest()) == "v0.1"
    port = free_port()
    proc = start(
        [python(), "-m", "recommender", "--registry", registry, "--port", str(port)],
        log=root / "service.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/readyz", timeout=60, proc=proc)
        yield base, registry
    finally:
        stop(proc)


def test_operator_view_shows_bias_fairness_and_rating_of_the_active_release(
    browser, served_bias: tuple[str, str]
) -> None:
    base, registry = served_bias
    tab = Page(browser, base)
    try:
        page = tab.page
        tab.goto("#operate")
        page.locator("#op-releases table.metrics").first.wait_for()
        state = page.request.get(f"{base}/operator/state").json()
        active = next(r["version"] for r in state["releases"] if r["active"])
        manifest = Registry.open(registry).manifest(active)
        assert check_release_row(page, manifest) == 6  # gender and occupation of three kinds
        als = page.locator("#op-releases table.metrics > tbody > tr").filter(
            has=page.locator('strong[data-kind="als"]')
        )
        # what an operator reads (the numbers above, spelled out once)
        assert als.locator('[data-metric="gini@10"]').inner_text() == "0.765"
        assert als.locator('[data-metric="long_tail@10"]').inner_text() == "0.194"
        assert als.locator('[data-metric="novelty@10"]').inner_text() == "1.91"
        gender = als.locator('li[data-grouping="gender"]').inner_text()
        assert gender == "gender 1.19× (M 0.062 / F 0.052)"
        ncf = page.locator("#op-releases table.metrics > tbody > tr").filter(
            has=page.locator('strong[data-kind="ncf"]')
        )
        assert ncf.locator('[data-metric="novelty@10"]').inner_text() == DASH
        # the 12-user group scores best but is not compared; the hostile name stays text
        occupation = als.locator('li[data-grouping="occupation"]').inner_text()
        assert occupation == f"occupation 4.61× ({HOSTILE} 0.092 / job00 0.020)"
        assert page.locator("#op-releases img").count() == 0
        assert page.evaluate("window.__pwned") is None
        assert page.locator("#op-releases p.rating").inner_text() == (
            "rating (test): RMSE 1.0156 · MAE 0.8028 vs global mean + biases RMSE 1.0443 · "
            "MAE 0.8259"
        )
        tab.screenshot("operate-bias.png")
        assert tab.errors == []
    finally:
        tab.close()


def test_operator_view_metrics_match_every_loaded_manifest(tab: Page, two_releases: dict) -> None:
    """v0.1 trained by the CLI (real bias, activity groups, rating), v0.2 from arrays (none)."""
    page = tab.page
    tab.goto("#operate")
    page.locator("#op-releases > tbody > tr").nth(1).locator("table.metrics").wait_for()
    registry = Registry.open(two_releases["registry"])
    trained = registry.manifest("v0.1")
    assert "gini@10" in trained["kinds"]["als"]["metrics"] and trained["rating"]
    check_release_row(page, trained)
    check_release_row(page, registry.manifest("v0.2"))
    v02 = page.locator("#op-releases > tbody > tr").filter(
        has=page.locator("td:first-child", has_text="v0.2")
    )
    assert v02.locator('[data-metric="gini@10"]').first.inner_text() == DASH
    assert tab.errors == []
