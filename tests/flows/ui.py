"""The Prefect UI in headless Chromium (Debian's, driven by Playwright): what a person sees of a flow run."""

from __future__ import annotations

import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright

TIMEOUT_MS = 60_000


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise RuntimeError("Debian's chromium is not installed: make system-deps installs it")
    return found


def artifact_text_from_flow_run_page(ui_url: str, flow_run_id: str, key: str, expect: str, screenshot: Path) -> str:
    """Open the flow run's page, its Artifacts tab, then the artifact `key`; wait until `expect` is shown and
    return the page's visible text. A screenshot of the last page is left at `screenshot` (for a person
    reading a failure)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{ui_url}/runs/flow-run/{flow_run_id}")
            page.get_by_role("tab", name="Artifacts").or_(page.get_by_text("Artifacts", exact=True)).first.click()
            page.get_by_text(key, exact=True).first.click()
            page.wait_for_url(f"{ui_url}/artifacts/artifact/**")
            try:
                page.get_by_text(expect).first.wait_for(state="visible")  # the markdown renders after the page
            finally:
                page.screenshot(path=str(screenshot), full_page=True)
            return page.inner_text("body")
        finally:
            browser.close()
