# voicehooks webhook receiver. Data (SQLite database, stored payloads) lives in /data,
# owned by uid 10001 (see README, Docker, for bind mounts).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VOICEHOOKS_DATA_DIR=/data \
    VOICEHOOKS_DATABASE_URL=sqlite:////data/voicehooks.db

# Numeric ids so that the runtime (and hosts mounting /data) need not resolve the name.
RUN groupadd --system --gid 10001 voicehooks \
    && useradd --system --uid 10001 --gid voicehooks --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin voicehooks \
    && mkdir /data \
    && chown voicehooks:voicehooks /data

WORKDIR /src
# Dependencies from the lock file only, each checked against its hash: the same versions on
# every build (bash scripts/lock.sh regenerates it from pyproject.toml). The lock includes
# setuptools, so the project itself builds without fetching anything unpinned.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY receiver/ receiver/
COPY handlers/ handlers/
RUN pip install --no-cache-dir --no-deps --no-build-isolation .

USER 10001:10001
WORKDIR /data
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["voicehooks", "serve", "--host", "0.0.0.0"]
