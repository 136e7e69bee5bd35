"""Runtime configuration, read from the environment (prefix ``VOICEHOOKS_``).

Every setting has a default that works on a fresh clone, so ``voicehooks serve`` needs no
configuration to start. A ``.env`` file in the working directory is read too (the environment
wins over it). Secrets are ``SecretStr`` so they never show up in a repr or a log line. Values are
range-checked here, so a bad one stops every command with one line naming it.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[SecretStr], NoDecode]
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _split_secrets(value: object) -> object:
    """Accept ``"a,b"`` from the environment as well as a list from Python."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VOICEHOOKS_", extra="ignore", env_file=".env", env_file_encoding="utf-8"
    )

    # Not in the repr: it may hold the database password (print store.db.shown_url of it).
    database_url: str = Field(default="sqlite:///./voicehooks.db", repr=False)
    # Connections kept per process for workers, readiness checks and admin commands (as many
    # again may open under a burst). The inbox writers' connections are their own, outside it.
    db_pool_size: int = Field(default=8, ge=1)
    data_dir: Path = Path("./voicehooks-data")

    elevenlabs_secrets: CommaList = Field(default_factory=list)
    elevenlabs_tolerance_seconds: int = Field(default=1800, ge=1)
    # ElevenLabs' SDKs do not bound future timestamps; we allow a small clock skew only.
    elevenlabs_future_skew_seconds: int = Field(default=300, ge=0)
    # The ElevenLabs API (text-to-dialogue renders, conversation backfill); residency hosts
    # work by setting the base URL.
    elevenlabs_api_key: SecretStr | None = None
    elevenlabs_base_url: str = "https://api.elevenlabs.io"
    # Periodic backfill of conversations whose webhooks never arrived (0: off).
    elevenlabs_reconcile_seconds: float = Field(default=0, ge=0)
    # How far back each periodic reconciliation looks (conversations started since then).
    elevenlabs_reconcile_lookback_seconds: float = Field(default=24 * 3600, gt=0)

    kie_hmac_keys: CommaList = Field(default_factory=list)
    kie_url_token: SecretStr | None = None
    kie_tolerance_seconds: int = Field(default=1800, ge=1)
    # The kie.ai jobs API (createTask, recordInfo).
    kie_api_key: SecretStr | None = None
    kie_base_url: str = "https://api.kie.ai"
    kie_poll_seconds: float = Field(default=60, gt=0)
    # Result audio downloaded from kie.ai is refused past this size (the URL is not trusted).
    kie_max_audio_bytes: int = Field(default=200 * 1024 * 1024, ge=1)

    # Sonna's dialogue endpoint (renders only: Sonna sends no webhooks).
    sonna_api_key: SecretStr | None = None
    sonna_base_url: str = "https://api.sonnalabs.app"

    # Where providers reach this receiver, for callback URLs (kie.ai's callBackUrl).
    public_url: str | None = None

    # Outbound fetches of URLs that came from payloads or provider answers (receiver/fetch.py).
    fetch_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    fetch_allow_private: bool = False

    max_body_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    # A body still arriving after this long is cut off with 408 (slow clients, see limits.py).
    body_timeout_seconds: float = Field(default=120, gt=0)
    # Requests in flight beyond this are answered 503 at once (receiver/limits.py).
    max_connections: int = Field(default=500, ge=1)
    # Bodies up to this size stay in memory and in the delivery row; larger ones are spooled
    # to disk while they are read and kept in the blob store.
    spool_threshold_bytes: int = Field(default=1024 * 1024, ge=0)

    admin_token: SecretStr | None = None
    plugins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    worker_concurrency: int = Field(default=4, ge=1)
    # `serve` runs its workers in a child `voicehooks worker` process at this lower CPU priority
    # (nice), so processing never slows acknowledging; false: threads in the serve process.
    worker_process: bool = True
    worker_nice: int = Field(default=10, ge=0, le=19)
    worker_poll_seconds: float = Field(default=0.5, gt=0)
    job_max_attempts: int = Field(default=8, ge=1)
    job_retry_base_seconds: float = Field(default=2.0, gt=0)
    job_retry_max_seconds: float = Field(default=3600.0, gt=0)
    job_lease_seconds: float = Field(default=60.0, gt=0)

    # The longest a delivery waits for the store: past it the answer is 503 store_unavailable
    # (the sender retries), never a hang. Also bounds connecting and each inbox statement.
    store_timeout_seconds: float = Field(default=10, gt=0, le=3600)

    # Group commit: how many deliveries one inbox transaction may carry.
    inbox_max_batch: int = Field(default=256, ge=1)
    # `serve` commits deliveries from a child process (receiver/inbox_process.py), so storing
    # never competes with answering for the interpreter lock; false: threads of serve itself.
    # (Other commands that store deliveries, such as replay --in-process, always use threads.)
    inbox_process: bool = True

    # Stored bodies of deliveries older than this many days, whose jobs are done, are deleted
    # daily by serve/worker (`voicehooks prune`); None keeps everything.
    retention_days: float | None = Field(default=None, gt=0)

    migrate_on_start: bool = True
    log_level: str = "info"
    # uvicorn's line per request; off by default (it cost a fifth of the ingest rate), since
    # every delivery is recorded in the store (`voicehooks deliveries list`).
    access_log: bool = False

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        """A URL SQLAlchemy can use, with a driver that is installed (checked without
        connecting); the message never repeats the URL, which may hold a password."""
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        try:
            make_url(value).get_dialect()
        except (NoSuchModuleError, ImportError):  # NoSuchModuleError is an ArgumentError
            raise ValueError(
                "unknown database or driver; use sqlite:///path/to/file.db or "
                "postgresql+psycopg://user:password@host/dbname"
            ) from None
        except (ArgumentError, ValueError):
            raise ValueError(
                "not a database URL; use sqlite:///path/to/file.db or "
                "postgresql+psycopg://user:password@host/dbname"
            ) from None
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().lower()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("elevenlabs_secrets", "kie_hmac_keys", mode="before")
    @classmethod
    def _secrets_from_csv(cls, value: object) -> object:
        return _split_secrets(value)

    @field_validator("plugins", "fetch_allowed_hosts", mode="before")
    @classmethod
    def _plugins_from_csv(cls, value: object) -> object:
        return _split_secrets(value)

    def secret_values(self) -> list[str]:
        """Every configured secret, the database password included: what ``redact`` removes."""
        from sqlalchemy.engine import make_url

        values = [
            secret.get_secret_value()
            for secret in (
                *self.elevenlabs_secrets,
                *self.kie_hmac_keys,
                self.kie_url_token,
                self.kie_api_key,
                self.elevenlabs_api_key,
                self.sonna_api_key,
                self.admin_token,
            )
            if secret is not None
        ]
        try:
            password = make_url(self.database_url).password
        except Exception:
            password = None
        if password:
            values.append(str(password))
        return [value for value in values if value]

    def redact(self, text: str) -> str:
        """``text`` (an error from a driver or a library) with every configured secret masked."""
        for value in sorted(self.secret_values(), key=len, reverse=True):
            text = text.replace(value, "***")
        return text

    @cached_property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @cached_property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"
