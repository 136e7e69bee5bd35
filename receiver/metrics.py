"""Prometheus metrics, served at ``GET /metrics``."""

from prometheus_client import Counter, Histogram

DELIVERIES = Counter(
    "voicehooks_deliveries_total",
    "Webhook requests by source and outcome (stored, duplicate, or the refusal code).",
    ["source", "outcome"],
)
INBOX_BATCH_SIZE = Histogram(
    "voicehooks_inbox_batch_size",
    "Deliveries committed per inbox transaction (group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
JOBS = Counter(
    "voicehooks_jobs_total",
    "Job executions by handler and result (done, retry, dead).",
    ["handler", "result"],
)
JOB_SECONDS = Histogram("voicehooks_job_seconds", "Handler run time.", ["handler"])
