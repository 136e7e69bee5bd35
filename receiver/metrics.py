"""Prometheus metrics, served at ``GET /metrics``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from receiver.jobs import Backlog

DELIVERIES = Counter(
    "voicehooks_deliveries_total",
    "Webhook requests by source and outcome (stored, duplicate, or the refusal code).",
    ["source", "outcome"],
)
DELIVERY_CONFLICTS = Counter(
    "voicehooks_delivery_conflicts_total",
    "Deliveries whose dedupe key was already stored with a different body (sha256).",
    ["source"],
)
INBOX_BATCH_SIZE = Histogram(
    "voicehooks_inbox_batch_size",
    "Deliveries committed per inbox transaction (group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
INBOX_COMMIT_SECONDS = Histogram(
    "voicehooks_inbox_commit_seconds",
    "Time to write and commit one inbox transaction: what every acknowledgement waits for.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
JOBS = Counter(
    "voicehooks_jobs_total",
    "Job executions by handler and result (done, retry, dead).",
    ["handler", "result"],
)
JOB_SECONDS = Histogram("voicehooks_job_seconds", "Handler run time.", ["handler"])

# Read from the jobs table at scrape time (receiver.jobs.backlog), so every process serving
# /metrics reports the same shared backlog.
JOBS_PENDING = Gauge("voicehooks_jobs_pending", "Jobs waiting to run (pending, not running).")
JOBS_DEAD = Gauge("voicehooks_jobs_dead", "Jobs that failed for good and wait for a replay.")
OLDEST_PENDING_SECONDS = Gauge(
    "voicehooks_oldest_pending_job_age_seconds",
    "Age of the oldest pending job (0 when none): how far behind the workers are.",
)


def set_backlog(backlog: Backlog) -> None:
    JOBS_PENDING.set(backlog.pending)
    JOBS_DEAD.set(backlog.dead)
    OLDEST_PENDING_SECONDS.set(backlog.oldest_pending_seconds)
