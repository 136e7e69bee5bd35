"""Runtime configuration, read from the environment (prefix ``VOICEHOOKS_``).

Every setting has a default that works on a fresh clone, so ``voicehooks serve`` needs no
configuration to start. Secrets are ``SecretStr`` so they never show up in a repr or a log line.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[SecretStr], NoDecode]


def _split_secrets(value: object) -> object:
    """Accept ``"a,b"`` from the environment as well as a list from Python."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOICEHOOKS_", extra="ignore")

    database_url: str = "sqlite:///./voicehooks.db"
    # Connections kept per process for workers, readiness checks and admin commands (as many
    # again may open under a burst). The inbox writers' connections are their own, outside it.
    db_pool_size: int = Field(default=8, ge=1)
    data_dir: Path = Path("./voicehooks-data")

    elevenlabs_secrets: CommaList = Field(default_factory=list)
    elevenlabs_tolerance_seconds: int = 1800
    # ElevenLabs' SDKs do not bound future timestamps; we allow a small clock skew only.
    elevenlabs_future_skew_seconds: int = 300
    # The ElevenLabs API (text-to-dialogue renders, conversation backfill); residency hosts
    # work by setting the base URL.
    elevenlabs_api_key: SecretStr | None = None
    elevenlabs_base_url: str = "https://api.elevenlabs.io"
    # Periodic backfill of conversations whose webhooks never arrived (0: off).
    elevenlabs_reconcile_seconds: float = Field(default=0, ge=0)

    kie_hmac_keys: CommaList = Field(default_factory=list)
    kie_url_token: SecretStr | None = None
    kie_tolerance_seconds: int = 1800
    # The kie.ai jobs API (createTask, recordInfo).
    kie_api_key: SecretStr | None = None
    kie_base_url: str = "https://api.kie.ai"
    kie_poll_seconds: float = Field(default=60, gt=0)
    # Result audio downloaded from kie.ai is refused past this size (the URL is not trusted).
    kie_max_audio_bytes: int = 200 * 1024 * 1024

    # Sonna's dialogue endpoint (renders only: Sonna sends no webhooks).
    sonna_api_key: SecretStr | None = None
    sonna_base_url: str = "https://api.sonnalabs.app"

    # Where providers reach this receiver, for callback URLs (kie.ai's callBackUrl).
    public_url: str | None = None

    # Outbound fetches of URLs that came from payloads or provider answers (receiver/fetch.py).
    fetch_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    fetch_allow_private: bool = False

    max_body_bytes: int = 256 * 1024 * 1024
    # Bodies up to this size stay in memory and in the delivery row; larger ones are spooled
    # to disk while they are read and kept in the blob store.
    spool_threshold_bytes: int = 1024 * 1024

    admin_token: SecretStr | None = None
    plugins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    worker_concurrency: int = 4
    # `serve` runs its workers in a child `voicehooks worker` process at this lower CPU priority
    # (nice), so processing never slows acknowledging; false: threads in the serve process.
    worker_process: bool = True
    worker_nice: int = Field(default=10, ge=0, le=19)
    worker_poll_seconds: float = 0.5
    job_max_attempts: int = 8
    job_retry_base_seconds: float = 2.0
    job_retry_max_seconds: float = 3600.0
    job_lease_seconds: float = 60.0

    # Group commit: how many deliveries one inbox transaction may carry.
    inbox_max_batch: int = Field(default=256, ge=1)

    migrate_on_start: bool = True
    log_level: str = "info"
    # uvicorn's line per request; off by default (it cost a fifth of the ingest rate), since
    # every delivery is recorded in the store (`voicehooks deliveries list`).
    access_log: bool = False

    @field_validator("elevenlabs_secrets", "kie_hmac_keys", mode="before")
    @classmethod
    def _secrets_from_csv(cls, value: object) -> object:
        return _split_secrets(value)

    @field_validator("plugins", "fetch_allowed_hosts", mode="before")
    @classmethod
    def _plugins_from_csv(cls, value: object) -> object:
        return _split_secrets(value)

    @cached_property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @cached_property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"
