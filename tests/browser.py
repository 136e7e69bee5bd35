"""Headless Chromium from Debian's packages (``chromium``, ``chromium-driver``), via selenium.

``scripts/test.sh`` installs both with apt-get when they are missing, as it does PostgreSQL.
The browser gets a fresh profile and no network beyond what the page asks for (loopback).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    # The audio test plays the call from script, with no user gesture to unlock it.
    "--autoplay-policy=no-user-gesture-required",
)


def find_chromium() -> tuple[str, str]:
    """``(browser, driver)`` paths, or a clear error saying what to install."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        raise RuntimeError(
            "headless Chromium not found: install Debian's chromium and chromium-driver "
            "(scripts/test.sh does it when run as root)"
        )
    return browser, driver


def chromium(profile: Path, *, width: int = 1280, height: int = 900) -> webdriver.Chrome:
    browser, driver = find_chromium()
    # Never let selenium fetch a browser or driver itself, nor report usage.
    os.environ.setdefault("SE_AVOID_STATS", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    options.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))
