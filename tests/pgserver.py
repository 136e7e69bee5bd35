"""A throwaway PostgreSQL server for tests.

    with PostgresServer() as pg:
        engine = create_engine(pg.url)

The server lives in a fresh temporary directory, listens on a free TCP port on
127.0.0.1, trusts every local connection and is killed (``pg_ctl stop -m
immediate``) and deleted on ``stop()``, on leaving the ``with`` block, or at
interpreter exit. PostgreSQL refuses to run as root, so when the tests run as
root the server processes run as the ``postgres`` user (or ``nobody``).
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

USER = "voicehooks"
DATABASE = "voicehooks"


def find_pg_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        )
        if result.returncode == 0 and result.stdout.strip():
            candidates.append(Path(result.stdout.strip()))
    # Debian/Ubuntu layout: /usr/lib/postgresql/<major>/bin, newest major first.
    debian = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(debian, key=_major_version, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    return None


def _major_version(bindir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name)) or (0,)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _unprivileged_user() -> str | None:
    """The user to run the server as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root, but neither a 'postgres' nor a 'nobody' user exists")


def _world_traversable(path: Path) -> bool:
    """Whether every directory from / down to ``path`` can be entered by any user."""
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in [path, *path.parents])


class PostgresServer:
    """Start a real PostgreSQL server in a temporary directory; see the module docstring."""

    def __init__(
        self, bindir: Path | None = None, startup_timeout: float = 60.0, *, durable: bool = False
    ) -> None:
        self.bindir = bindir
        self.startup_timeout = startup_timeout
        # Tests trade durability for speed (fsync off); benchmarks need the real thing.
        self.durable = durable
        self.port: int | None = None
        self.tmpdir: Path | None = None
        self._run_as: str | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("PostgresServer is not running")
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def logfile(self) -> Path:
        assert self.tmpdir is not None
        return self.tmpdir / "postgres.log"

    @property
    def datadir(self) -> Path:
        assert self.tmpdir is not None
        return self.tmpdir / "data"

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> PostgresServer:
        if self.tmpdir is not None:
            raise RuntimeError("PostgresServer is already started")
        self.bindir = self.bindir or find_pg_bindir()
        if self.bindir is None:
            raise RuntimeError(
                "PostgreSQL server binaries (initdb, pg_ctl) not found; "
                "install them, e.g. apt-get install postgresql"
            )
        self._run_as = _unprivileged_user()
        base = Path(tempfile.gettempdir())
        if self._run_as and not _world_traversable(base):
            base = Path("/tmp")
        self.tmpdir = Path(tempfile.mkdtemp(prefix="voicehooks-pg-", dir=base))
        atexit.register(self.stop)
        try:
            if self._run_as:
                shutil.chown(self.tmpdir, user=self._run_as, group=None)
                self.logfile.touch()
                shutil.chown(self.logfile, user=self._run_as, group=None)
            self._initdb()
            self._start_server()
            self._create_database()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill the server and delete its directory; safe to call more than once."""
        atexit.unregister(self.stop)
        if self.tmpdir is None:
            return
        if (self.datadir / "postmaster.pid").exists():
            self._pg("pg_ctl", "stop", "-D", self.datadir, "-m", "immediate", "-w")
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        self.tmpdir = None
        self.port = None

    # -- steps of start() ---------------------------------------------------

    def _initdb(self) -> None:
        result = self._pg(
            "initdb", "-D", self.datadir, "-A", "trust", "-U", USER,
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{result.stdout}{result.stderr}")

    def pause(self) -> None:
        """Shut the server down (``-m fast``: sessions are cut off) but keep its data and port:
        a database outage. ``resume()`` ends it."""
        result = self._pg("pg_ctl", "stop", "-D", self.datadir, "-m", "fast", "-w")
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl stop failed:\n{result.stdout}{result.stderr}")

    def resume(self) -> None:
        """Start the paused server again, on the same port."""
        self._start_server(port=self.port)

    def _start_server(self, port: int | None = None) -> None:
        assert self.tmpdir is not None
        # Another process may grab the free port before the server binds it: retry.
        for _attempt in range(3 if port is None else 1):
            self.port = port or _free_port()
            options = (
                f"-p {self.port} -c listen_addresses=127.0.0.1 -k {shlex.quote(str(self.tmpdir))} "
                + (
                    "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
                    if self.durable
                    else "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                )
            )
            result = self._pg(
                "pg_ctl", "start", "-D", self.datadir, "-l", self.logfile,
                "-o", options, "-w", "-t", str(int(self.startup_timeout)),
            )  # fmt: skip
            if result.returncode == 0:
                return
            if "could not bind" not in self._log_tail():
                break
            self._pg("pg_ctl", "stop", "-D", self.datadir, "-m", "immediate", "-w")
        raise RuntimeError(
            f"PostgreSQL failed to start:\n{result.stdout}{result.stderr}\n"
            f"--- {self.logfile} (tail) ---\n{self._log_tail()}"
        )

    def _create_database(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                with psycopg.connect(
                    host="127.0.0.1", port=self.port, user=USER, dbname="postgres",
                    autocommit=True, connect_timeout=5,
                ) as conn:  # fmt: skip
                    conn.execute(f'CREATE DATABASE "{DATABASE}"')
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"PostgreSQL on port {self.port} is not accepting connections: {exc}\n"
                        f"--- {self.logfile} (tail) ---\n{self._log_tail()}"
                    ) from exc
                time.sleep(0.1)

    # -- helpers ------------------------------------------------------------

    def _pg(self, program: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program from bindir, as the unprivileged user when we are root."""
        assert self.bindir is not None and self.tmpdir is not None
        command = [str(self.bindir / program), *map(str, args)]
        if self._run_as:
            command = ["runuser", "-u", self._run_as, "--", *command]
        # Keep PG* settings of the caller (PGDATA, PGPORT, ...) away from the server.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return subprocess.run(
            command,
            cwd=self.tmpdir,  # the unprivileged user may not be able to enter our cwd
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
