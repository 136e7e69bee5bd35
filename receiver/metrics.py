"""Prometheus metrics, served at ``GET /metrics``."""

from prometheus_client import Counter, Histogram

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
