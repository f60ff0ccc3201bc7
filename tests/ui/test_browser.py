"""End to end in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by
Selenium): `awm ui` on the seeded store, the leaderboard loads, a filter applies, a comparison
opens with its images; screenshots go to the test's output folder (and to
$AWM_UI_SCREENSHOT_DIR when set: the README's screenshot is made this way).

Chromium is a tool of `scripts/services.sh tools`, like SLURM is a service: where the services are
required (AWM_REQUIRE_SERVICES=1, CI=true) a missing browser FAILS the test, else it skips."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.services import fail_or_skip
from tests.ui.conftest import EMA_RUN, Seeded, UiServer

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_S = 90  # first render on a busy 2-core box
SCREEN = (1400, 900)


def _need_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[dev]')")
    if not missing:
        return
    fail_or_skip(f"the browser test needs {', '.join(missing)} (`bash scripts/services.sh tools` installs chromium)")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={SCREEN[0]},{SCREEN[1]}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_text(driver: Any, *texts: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def seen(d: Any) -> str | bool:
        body = d.find_element(By.TAG_NAME, "body").text
        return body if all(t in body for t in texts) else False

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.25).until(seen)
    except Exception as exc:  # say what the page showed instead
        body = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"{texts!r} never appeared; the page shows: {body[:1500]}") from exc


def _shot(driver: Any, out: Path, name: str) -> Path:
    path = out / name
    assert driver.save_screenshot(str(path)), path
    extra = os.environ.get("AWM_UI_SCREENSHOT_DIR")
    if extra:
        shutil.copy(path, Path(extra) / name)
    return path


def _rows_of(seeded: Seeded, runs: set[str] | None) -> int:
    with seeded.store() as store:
        return len({(e.checkpoint_sha256, e.weights) for e in store.list_evaluations(status="COMPLETED")
                    if not e.partial and e.weights != "base" and (runs is None or e.run_name in runs)})


def test_leaderboard_filter_and_comparison_in_chromium(ui_server: UiServer, seeded: Seeded, browser: Any,
                                                       tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out = tmp_path / "screenshots"
    out.mkdir()
    # the leaderboard
    browser.get(ui_server.base_url + "/")
    # the page streams in: wait for its last section
    body = _wait_text(browser, f"{_rows_of(seeded, None)} rows", "In-loop metrics", "Partial evaluations")
    assert "Leaderboard" in body and "base model" not in body.split("rows")[0]
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"]'))
    _shot(browser, out, "leaderboard.png")

    # a filter, as a link: the URL is the view
    with seeded.store() as store:
        alpha = {r.name for r in store.list_runs(sweep_name="alpha")}
    browser.get(ui_server.base_url + "/?view=leaderboard&sweep=alpha&sort=score:ocr")
    body = _wait_text(browser, f"{_rows_of(seeded, alpha)} rows")

    def chips(d: Any) -> list[str]:
        return [e.get_attribute("aria-label") for e in
                d.find_elements(By.CSS_SELECTOR, '[data-testid="stMultiSelectTagsContainer"] [data-tag]')]

    # the sidebar's sweep filter took the link's value (its chips may render after the rows' text)
    try:
        WebDriverWait(browser, WAIT_S, poll_frequency=0.25).until(lambda d: "alpha" in chips(d))
    except Exception as exc:
        raise AssertionError(f"no 'alpha' chip in the sweep filter; chips: {chips(browser)}") from exc
    _shot(browser, out, "leaderboard-alpha.png")

    # a comparison of two checkpoints and the base model, with images and per-image scores
    with seeded.store() as store:
        keys = [f"{store.get_evaluation(seeded.eval_ids[k]).checkpoint_sha256}:{k[3]}"
                for k in ((EMA_RUN, 100, "ocr", "policy"), ("alpha-t1", 100, "ocr", "policy"),
                          (None, None, "ocr", "base"))]
    browser.get(ui_server.base_url + f"/?view=compare&benchmark=ocr&rows={','.join(keys)}")
    body = _wait_text(browser, "Scores and paired differences", "score 0.", f"{EMA_RUN}@100", "alpha-t1@100",
                      "base model /models/tiny-sd3")
    loaded = WebDriverWait(browser, WAIT_S).until(lambda d: [
        img for img in d.find_elements(By.CSS_SELECTOR, '[data-testid="stImage"] img')
        if d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)] or False)
    assert len(loaded) >= 3  # the images are served (not refused, not broken)
    shot = _shot(browser, out, "compare.png")
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
