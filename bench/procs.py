"""Server processes for the benchmarks, and where the machine's CPU went while measuring."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict[str, Any]:
    """What RESULTS.md needs to say about the machine."""
    cpu = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        mem_kb = int(fh.readline().split()[1])
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    wrk_version = (wrk.stdout or wrk.stderr).strip().splitlines()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk_version[0] if wrk_version else "",
    }


def _busy_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def wait_for_quiet(threshold: float, timeout: float, sample: float = 1.0) -> dict[str, float]:
    """Wait (up to ``timeout`` s) until the machine's CPU is at most ``threshold`` busy.

    Called between phases, when the server under test is idle: what is busy then is someone
    else. A shared machine makes every number noisy; this lowers the odds that a phase starts
    in the middle of another job's burst (``cpu_meter`` still records what happened during it).
    """
    started = time.monotonic()
    if timeout <= 0:
        return {"busy_share": -1.0, "waited_s": 0.0}  # not waiting (--quick)
    while True:
        busy0, total0 = _busy_ticks()
        time.sleep(sample)
        busy1, total1 = _busy_ticks()
        share = (busy1 - busy0) / ((total1 - total0) or 1)
        waited = time.monotonic() - started
        if share <= threshold or waited >= timeout:
            return {"busy_share": round(share, 3), "waited_s": round(waited, 1)}


def process_cpu_seconds(pid: int) -> float:
    """CPU time of a process and all its threads (utime + stime)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (for a database server: the postmaster and backends)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    tree, frontier = [pid], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        tree += children
        frontier = children
    return tree


def _cpu_of(pids: list[int]) -> dict[int, float]:
    seconds = {}
    for pid in pids:
        with contextlib.suppress(OSError):  # a backend may have exited
            seconds[pid] = process_cpu_seconds(pid)
    return seconds


@contextmanager
def cpu_meter(server: Server, into: dict[str, Any]) -> Iterator[None]:
    """Record how the machine's CPU was spent during a phase: server (and its database server,
    if any), load generator, and everything else.

    The machine is small and may be shared: ``other_cpu_share`` says whether something else
    used it while we measured (well above 0.1 and the numbers are not to be trusted).
    """
    database_pids = server.database_pids() if server.database_pids else []
    busy0, total0 = _busy_ticks()
    # The server's children count as the server (serve's worker process), not as noise.
    server0 = _cpu_of(process_tree(server.pid))
    database0 = _cpu_of(database_pids)
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.monotonic()
    yield
    wall = time.monotonic() - wall0
    busy1, total1 = _busy_ticks()
    server1 = _cpu_of(process_tree(server.pid))
    used = sum(server1[pid] - server0.get(pid, 0.0) for pid in server1)
    database1 = _cpu_of(database_pids)
    database = sum(database1[pid] - database0[pid] for pid in database1.keys() & database0.keys())
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    load = (children1.ru_utime + children1.ru_stime - children0.ru_utime - children0.ru_stime) + (
        self1.ru_utime + self1.ru_stime - self0.ru_utime - self0.ru_stime
    )
    tick = os.sysconf("SC_CLK_TCK")
    busy = (busy1 - busy0) / tick
    capacity = (total1 - total0) / tick or 1.0
    into["cpu"] = {
        "wall_s": round(wall, 2),
        "server_cpu_s": round(used, 2),
        "database_cpu_s": round(database, 2),
        "load_generator_cpu_s": round(load, 2),
        "other_cpu_share": round(max(0.0, busy - used - database - load) / capacity, 3),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env() -> dict[str, str]:
    """The caller's environment without VOICEHOOKS_* (targets run with defaults)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEHOOKS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def voicehooks_argv() -> list[str]:
    script = Path(sys.executable).with_name("voicehooks")
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-m", "receiver", "serve"]


class Server:
    """One server subprocess on a loopback port, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name, self.env, self.workdir = name, env, workdir
        self.port = free_port()
        self.argv = [*argv, "--port", str(self.port)]
        self.log = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        # The processes of the database server it uses, if that is a separate server.
        self.database_pids: Callable[[], list[int]] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> Server:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv, env=self.env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start-up:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not answer /healthz:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Ctrl-C (graceful: uvicorn drains, the inbox commits what it holds), then kill."""
        if self.process is not None:
            stop_gracefully(self.process)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def stop_gracefully(process: subprocess.Popen[bytes]) -> None:
    """SIGINT, as Ctrl-C would; SIGKILL after 30 s."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_worker_process(server: Server) -> subprocess.Popen[bytes]:
    """`voicehooks worker` with ``server``'s environment (the server has migrated the store);
    returns once it has had time to start and look for jobs."""
    argv = [*voicehooks_argv()[:-1], "worker"]
    log = server.workdir / f"{server.name}-worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            argv, env=server.env, cwd=server.workdir, stdout=out, stderr=subprocess.STDOUT
        )
    time.sleep(2.0)
    if worker.poll() is not None:
        raise RuntimeError(f"voicehooks worker exited at start-up:\n{log.read_text()[-2000:]}")
    return worker
