"""A real receiver with the inspector and the provider fakes, for the renders page tests.

The ElevenLabs and kie.ai fakes (tests/fakes/) run on loopback; the receiver's settings point
at them, so a render submitted through ``POST /api/v1/renders`` runs against them when the test
drains the worker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from receiver.registry import load_registry
from tests.conftest import make_settings
from tests.fakes.elevenlabs_dialogue import ElevenLabsDialogueFake
from tests.fakes.kie_api import KieFake
from tests.fakes.scripted import serving
from tests.inspector import TOKEN, Inspector


@contextlib.contextmanager
def renders_inspector(
    database_url: str,
    tmp_path: Path,
    services_factory: Any,
    live_server: Any,
    **settings: Any,
) -> Iterator[tuple[Inspector, ElevenLabsDialogueFake, KieFake]]:
    """The inspector, with ElevenLabs and kie.ai keys pointing at local fakes (no callbacks:
    the kie.ai task stays running, which is all the pages need)."""
    eleven = ElevenLabsDialogueFake()
    kie = KieFake(call_back=False)
    with serving(eleven.app()) as el_url, serving(kie.app()) as kie_url:
        values: dict[str, Any] = {
            "admin_token": TOKEN,
            "elevenlabs_api_key": eleven.api_key,
            "elevenlabs_base_url": el_url,
            "kie_api_key": kie.api_key,
            "kie_base_url": kie_url,
            "fetch_allow_private": True,
            **settings,
        }
        services = services_factory(
            make_settings(database_url, tmp_path / "data", **values), load_registry()
        )
        yield Inspector(live_server(services, run_worker=False)), eleven, kie
