"""The renders page in a real browser (headless Debian Chromium via selenium): an ElevenLabs
render made against the local fake shows its voice segments as a timeline, and playing it
highlights the segment being spoken, moving on as the time crosses a segment boundary."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser import chromium
from tests.dialogue_support import script_doc
from tests.fakes.scripted import MP3_FORMAT
from tests.inspector import XSS, Inspector
from tests.renders_inspector import renders_inspector
from tests.test_ui_browser import DURATION_JS, no_alert, sign_in, wait_for


@pytest.fixture
def inspector(database_url, tmp_path, services_factory, live_server) -> Iterator[Inspector]:  # type: ignore[no-untyped-def]
    with renders_inspector(database_url, tmp_path, services_factory, live_server) as running:
        yield running[0]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    driver = chromium(tmp_path / "profile")
    try:
        yield driver
    finally:
        driver.quit()


def speaking(driver: WebDriver) -> list[str]:
    """The positions of the highlighted segments."""
    return [
        el.get_attribute("data-position") or ""
        for el in driver.find_elements(By.CSS_SELECTOR, "#timeline .segment.speaking")
    ]


def test_playing_an_elevenlabs_render_highlights_the_segment_being_spoken(
    inspector: Inspector, browser: WebDriver
) -> None:
    turns = [
        {"text": "Hello there, how are you?", "voice": "Rachel"},
        {"text": XSS, "voice": "Adam"},
    ]
    body = {**script_doc(turns=turns, output_format=MP3_FORMAT), "provider": "elevenlabs"}
    created = inspector.api("POST", "/api/v1/renders", json=body)
    assert created.status_code == 201, created.text
    inspector.drain()
    render_id = created.json()["id"]

    sign_in(browser, inspector, "/ui/renders")
    browser.find_element(By.LINK_TEXT, "Test call").click()
    wait_for(browser, lambda d: d.current_url.endswith(f"/ui/renders/{render_id}"))
    segments = browser.find_elements(By.CSS_SELECTOR, "#timeline .segment")
    assert [s.find_element(By.CSS_SELECTOR, ".message").text for s in segments] == [
        "Hello there, how are you?",
        XSS,
    ]
    assert browser.find_elements(By.CSS_SELECTOR, "img") == [] and no_alert(browser)
    boundary = float(segments[1].get_attribute("data-start") or "nan")
    assert 0.5 < boundary < 3.0
    player = browser.find_element(By.ID, "player")
    assert wait_for(browser, lambda d: d.execute_script(DURATION_JS, player)) > boundary
    assert speaking(browser) == []  # nothing is spoken before it plays

    # Play from the first segment's button: the first segment lights up while time advances...
    segments[0].find_element(By.CSS_SELECTOR, "button.seek").click()
    wait_for(browser, lambda d: d.execute_script("return !arguments[0].paused", player))
    wait_for(browser, lambda d: speaking(d) == ["0"])
    before = browser.execute_script("return arguments[0].currentTime", player)
    assert before < boundary
    # ... and the highlight moves to the second as the time crosses the boundary, by itself.
    wait_for(browser, lambda d: speaking(d) == ["1"])
    after = browser.execute_script("return arguments[0].currentTime", player)
    assert after >= boundary > before
    assert no_alert(browser)
