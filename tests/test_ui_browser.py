"""The inspector in a real browser: headless Chromium (Debian's) driven by selenium.

What an operator does, end to end against a real receiver on loopback: sign in, watch a
replayed delivery arrive without reloading, play a call and seek in it, retry a dead job, and
read a transcript whose text is markup without the browser running any of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser import chromium
from tests.conftest import FIXTURES
from tests.inspector import (
    TOKEN,
    XSS,
    Inspector,
    audio_body,
    broken_audio_body,
    start_inspector,
    transcription_body,
)

WAIT = 20
REPLAYED = FIXTURES / "elevenlabs" / "post_call_transcription.json"
# The player's duration once its metadata is loaded, else false (WebDriverWait retries).
DURATION_JS = (
    "const a = arguments[0]; return a.readyState >= 1 && isFinite(a.duration) && a.duration"
)


@pytest.fixture
def inspector(database_url, tmp_path, services_factory, live_server) -> Inspector:  # type: ignore[no-untyped-def]
    return start_inspector(database_url, tmp_path, services_factory, live_server)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    driver = chromium(tmp_path / "profile")
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, condition: Any, timeout: float = WAIT) -> Any:
    # The live pages re-render their rows: an element found a moment ago may be gone. The
    # condition is then simply tried again on the fresh page.
    return WebDriverWait(
        driver,
        timeout,
        poll_frequency=0.05,
        ignored_exceptions=[StaleElementReferenceException],
    ).until(condition)


def sign_in(driver: WebDriver, inspector: Inspector, page: str = "/ui/") -> None:
    driver.get(inspector.url + page)
    wait_for(driver, lambda d: "/ui/login" in d.current_url)
    driver.find_element(By.NAME, "token").send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait_for(driver, lambda d: "/ui/login" not in d.current_url)


def no_alert(driver: WebDriver) -> bool:
    try:
        driver.switch_to.alert  # noqa: B018  # raises when there is none
    except NoAlertPresentException:
        return True
    return False


def test_sign_in_with_the_form_and_with_the_printed_link(
    inspector: Inspector, browser: WebDriver
) -> None:
    browser.get(inspector.url + "/ui/deliveries?status=dead")
    assert "/ui/login" in browser.current_url  # not signed in: sent to the sign-in page
    browser.find_element(By.NAME, "token").send_keys("not-the-token")
    browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "login-error"))

    browser.find_element(By.NAME, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
    # Back where the operator was going, signed in, and the session is not readable by script.
    wait_for(browser, lambda d: d.current_url.endswith("/ui/deliveries?status=dead"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Deliveries"
    assert "voicehooks_session" not in browser.execute_script("return document.cookie")

    browser.delete_all_cookies()
    # The link `voicehooks serve` prints: the token rides in the fragment and signs in at once.
    browser.get(f"{inspector.url}/ui/login#token={TOKEN}")
    wait_for(browser, lambda d: d.current_url == inspector.url + "/ui/")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Overview"
    assert TOKEN not in browser.current_url


def test_a_replayed_delivery_appears_without_a_reload(
    inspector: Inspector, browser: WebDriver
) -> None:
    sign_in(browser, inspector, "/ui/deliveries")
    assert browser.find_elements(By.CSS_SELECTOR, "#deliveries tbody tr") == []
    browser.execute_script("window.notReloaded = true")

    inspector.replay(REPLAYED)

    def first_row(driver: WebDriver) -> tuple[list[str], str | None] | None:
        """The row's cells and its subject link, read from one rendering of the table."""
        rows = driver.find_elements(By.CSS_SELECTOR, '#deliveries tr[data-id="1"]')
        if not rows:
            return None
        cells = [cell.text for cell in rows[0].find_elements(By.TAG_NAME, "td")]
        link = rows[0].find_element(By.LINK_TEXT, "abc")  # the subject, linked
        return cells, link.get_attribute("href")

    cells, href = wait_for(browser, first_row)
    assert cells[2:5] == ["elevenlabs", "post_call_transcription", "abc"]
    assert cells[6] == "pending"
    assert browser.execute_script("return window.notReloaded") is True
    assert href == inspector.url + "/ui/conversations/abc"
    # It keeps following the job: done once the worker has run it.
    inspector.drain()
    wait_for(
        browser,
        lambda d: (
            d.find_element(By.CSS_SELECTOR, '#deliveries tr[data-id="1"] .status').text == "done"
        ),
    )
    assert browser.execute_script("return window.notReloaded") is True


def test_open_a_conversation_and_play_its_audio(inspector: Inspector, browser: WebDriver) -> None:
    inspector.post(transcription_body("conv-play", "Hello!", "Hi, when are you open?", "At 9."))
    inspector.post(audio_body("conv-play"))
    assert inspector.drain() == 2
    sign_in(browser, inspector, "/ui/conversations")
    browser.find_element(By.LINK_TEXT, "conv-play").click()
    wait_for(browser, lambda d: d.current_url.endswith("/ui/conversations/conv-play"))
    turns = browser.find_elements(By.CSS_SELECTOR, "#transcript .turn .message")
    assert [t.text for t in turns] == ["Hello!", "Hi, when are you open?", "At 9."]

    player = browser.find_element(By.ID, "player")
    duration = wait_for(
        browser,
        lambda d: d.execute_script(
            DURATION_JS,
            player,
        ),
    )
    assert 3.0 < duration < 4.5  # fixtures/audio/hello.mp3 lasts about 3.7 s
    # Seek by clicking a turn's time: the player jumps there and plays on.
    browser.find_element(By.CSS_SELECTOR, 'button[data-seek="1.0"]').click()
    start = wait_for(
        browser,
        lambda d: d.execute_script(
            "return !arguments[0].paused && arguments[0].currentTime", player
        ),
    )
    assert start >= 1.0
    later = wait_for(
        browser,
        lambda d: (
            (t := d.execute_script("return arguments[0].currentTime", player)) > start + 0.3 and t
        ),
    )
    assert later > start
    # The turn being spoken is highlighted (1 s to 2 s is the second turn).
    speaking = browser.find_elements(By.CSS_SELECTOR, "#transcript .turn.speaking .message")
    assert [t.text for t in speaking] in (["Hi, when are you open?"], ["At 9."])


def test_retry_a_dead_job_and_see_it_requeued(inspector: Inspector, browser: WebDriver) -> None:
    delivery_id = inspector.post(broken_audio_body())
    inspector.drain()
    sign_in(browser, inspector, "/ui/dead")
    rows = browser.find_elements(By.CSS_SELECTOR, "#dead tbody tr")
    assert len(rows) == 1
    assert "not valid base64" in rows[0].text
    rows[0].find_element(By.CSS_SELECTOR, "button.retry-one").click()

    wait_for(browser, lambda d: d.find_elements(By.ID, "requeued"))
    assert browser.find_element(By.ID, "requeued").text == "1 job(s) queued again."
    assert browser.find_element(By.ID, "none").text == "No dead jobs."
    browser.get(f"{inspector.url}/ui/deliveries/{delivery_id}")
    statuses = browser.find_elements(By.CSS_SELECTOR, "#jobs .status")
    assert [s.text for s in statuses] == ["pending"]
    # The delivery page's own retry button works the same way.
    inspector.drain()
    browser.refresh()
    browser.find_element(By.ID, "retry").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "requeued"))
    assert [s.text for s in browser.find_elements(By.CSS_SELECTOR, "#jobs .status")] == ["pending"]


def test_a_transcript_containing_markup_shows_as_text_and_runs_nothing(
    inspector: Inspector, browser: WebDriver
) -> None:
    # The markup is in the transcript and, for the live-refreshed list, in the conversation id.
    inspector.post(transcription_body("conv-xss", "Welcome.", XSS))
    inspector.post(transcription_body(XSS, XSS))
    inspector.drain()
    sign_in(browser, inspector, "/ui/conversations/conv-xss")
    messages = browser.find_elements(By.CSS_SELECTOR, "#transcript .message")
    assert [m.text for m in messages] == ["Welcome.", XSS]
    assert browser.find_elements(By.CSS_SELECTOR, "#transcript img") == []
    assert no_alert(browser)

    browser.get(inspector.url + "/ui/deliveries")
    browser.execute_script("window.notReloaded = true")
    inspector.post(transcription_body("conv-later", "Later."))  # makes the list re-render
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#deliveries tr[data-id="3"]'))
    subjects = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#deliveries td.mono")]
    assert XSS in subjects
    assert browser.find_elements(By.CSS_SELECTOR, "#deliveries img") == []
    assert browser.execute_script("return window.notReloaded") is True
    assert no_alert(browser)
