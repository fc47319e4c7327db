"""The README's two screenshots of the page, taken from a real service on a loopback port.

    python scripts/ui_screenshots.py --registry file://$PWD/registry --out docs

Starts `python -m recommender` on the registry (with an admin token and a two-arm experiment),
drives Debian's Chromium with Playwright: "Try it" with the first hit of three title searches, and
"Run it" after promoting the active release through the page. Writes screenshot-try.png and
screenshot-operate.png into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.helpers import CHROMIUM, CHROMIUM_ARGS, free_port, wait_for_http  # noqa: E402

EXPERIMENT = {
    "name": "als-vs-itemcf",
    "salt": "readme",
    "arms": [
        {"name": "control", "model": "als", "weight": 50},
        {"name": "treatment", "model": "itemcf", "weight": 50},
    ],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", required=True)
    parser.add_argument("--out", default="docs")
    parser.add_argument(
        "--picks", default="star wars,fargo,toy story", help="searches; the first hit of each"
    )
    args = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    port = free_port()
    env = {
        **os.environ,
        "REC_ADMIN_TOKEN": token,
        "REC_EXPERIMENT": json.dumps(EXPERIMENT),
        "REC_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "recommender", "--registry", args.registry, "--port", str(port)],
        cwd=REPO,
        env=env,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/readyz", timeout=120, proc=proc)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30_000)
            expect.set_options(timeout=30_000)
            page.goto(f"{base}/#try")
            results = page.locator("#search-results li")
            for query in args.picks.split(","):
                page.locator("#q").fill(query)
                page.locator("#q").press("Enter")
                expect(page.locator("#search-status")).to_contain_text(query)
                results.first.get_by_role("button", name="Add").click()
            page.get_by_role("button", name="Recommend for these movies").click()
            expect(page.locator("#lists-status")).to_contain_text("one list per model")
            page.screenshot(path=str(out / "screenshot-try.png"), full_page=True)

            page.goto(f"{base}/#operate")
            active = page.locator("#op-summary .card").first.locator(".value")
            expect(active).to_contain_text("v")
            page.get_by_label("Admin token").fill(token)
            page.get_by_role("button", name="Use token").click()
            page.get_by_label("Version").fill(active.inner_text().strip())
            page.get_by_label("Reason").first.fill("pin the release the fleet serves")
            page.get_by_role("button", name="Promote").click()
            expect(page.locator("#admin-status")).to_contain_text("promoted")
            page.get_by_label("Admin token").fill("")
            page.get_by_role("button", name="Forget").click()
            page.screenshot(path=str(out / "screenshot-operate.png"), full_page=True)
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    print(f"wrote {out / 'screenshot-try.png'} and {out / 'screenshot-operate.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
