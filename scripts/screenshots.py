"""Take the README's screenshots of the inspector with headless Chromium.

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots]

Starts a throwaway receiver (SQLite in a temporary directory, loopback only), replays the
bundled fixtures into it (ElevenLabs calls with a recording, a broken audio webhook that dies,
kie.ai callbacks) and a dialogue render made against the local ElevenLabs fake, runs the jobs,
signs in through the printed-link path and saves one PNG per main page. Needs Debian's chromium
and chromium-driver, as the browser tests do.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from receiver.app import create_app  # noqa: E402
from receiver.registry import load_registry  # noqa: E402
from receiver.service import Services  # noqa: E402
from receiver.settings import Settings  # noqa: E402
from tests.browser import chromium  # noqa: E402
from tests.conftest import FIXTURES, serve_in_thread  # noqa: E402
from tests.fakes.elevenlabs_dialogue import ElevenLabsDialogueFake  # noqa: E402
from tests.fakes.scripted import MP3_FORMAT  # noqa: E402

TOKEN = "screenshot-token"
KIE_KEY = "screenshot-kie-key"
PAGES = {
    "overview": "/ui/",
    "deliveries": "/ui/deliveries",
    "delivery": "/ui/deliveries/{transcription}",
    "dead": "/ui/dead",
    "conversations": "/ui/conversations",
    "conversation": "/ui/conversations/conv_fixture_0001",
    "tasks": "/ui/tasks",
    "task": "/ui/tasks/9d2e4b6a8c0f1e3d5b7a9c1e3f5d7b02",
    "renders": "/ui/renders",
    "render": "/ui/renders/{render}",
}
REPLAYED = [
    *sorted((FIXTURES / "elevenlabs").glob("*.json")),
    FIXTURES / "kie" / "waiting.json",
    FIXTURES / "kie" / "fail.json",
]


def replay(url: str) -> None:
    from receiver.cli.main import app

    os.environ["VOICEHOOKS_ELEVENLABS_SECRETS"] = "screenshot-secret"
    os.environ["VOICEHOOKS_KIE_HMAC_KEYS"] = KIE_KEY
    app(["replay", *map(str, REPLAYED), "--url", url], standalone_mode=False)


# Seeking fires "timeupdate", which makes player.js highlight the segment at that time.
SEEK_JS = "document.getElementById('player').currentTime = arguments[0]"
SEEK_SECONDS = 2.5
RENDER_SCRIPT = {
    "title": "Opening hours",
    "output_format": MP3_FORMAT,
    "turns": [
        {"text": "Hello! When are you open tomorrow?", "voice": "Rachel"},
        {"text": "From nine to five, all day.", "voice": "Adam"},
    ],
}


def render_dialogue(services: Services) -> int:
    """A dialogue render, submitted as `dialogue submit` does and run against the fake."""
    from handlers.dialogue import store
    from handlers.dialogue.script import parse_script

    return store.submit(
        services.engine, services.registry, parse_script(RENDER_SCRIPT), "elevenlabs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    fake = ElevenLabsDialogueFake()
    with tempfile.TemporaryDirectory() as tmp, serve_in_thread(fake.app()) as fake_url:
        settings = Settings(
            database_url=f"sqlite:///{tmp}/voicehooks.db",
            data_dir=Path(tmp) / "data",
            elevenlabs_secrets=["screenshot-secret"],  # type: ignore[list-item]
            kie_hmac_keys=[KIE_KEY],  # type: ignore[list-item]
            admin_token=TOKEN,  # type: ignore[arg-type]
            elevenlabs_api_key=fake.api_key,  # type: ignore[arg-type]
            elevenlabs_base_url=fake_url,
            log_level="warning",
        )
        services = Services.create(settings, load_registry())
        services.migrate()
        with serve_in_thread(create_app(services=services, run_worker=False)) as url:
            replay(url)
            render = render_dialogue(services)
            asyncio.run(services.worker.drain())
            from receiver import jobs

            transcription = next(
                row.id
                for row in jobs.list_deliveries(services.engine, limit=100)
                if row.event_type == "post_call_transcription"
            )
            driver = chromium(Path(tmp) / "profile", width=1280, height=860)
            try:
                driver.get(f"{url}/ui/login#token={TOKEN}")
                time.sleep(1)
                for name, path in PAGES.items():
                    driver.get(url + path.format(transcription=transcription, render=render))
                    time.sleep(0.8)  # fonts, the player's metadata
                    if name == "render":  # show a segment highlighted, as while it plays
                        driver.execute_script(SEEK_JS, SEEK_SECONDS)
                        time.sleep(0.5)
                    target = args.out / f"{name}.png"
                    driver.save_screenshot(str(target))
                    print(target.relative_to(ROOT) if target.is_relative_to(ROOT) else target)
            finally:
                driver.quit()
        services.close()


if __name__ == "__main__":
    main()
