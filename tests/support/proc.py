"""Drive newsworker as its users do: the CLI and a real Celery worker, as processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def base_env(var_dir: Path, **settings: str) -> dict[str, str]:
    """The environment for a newsworker process: nothing inherited from NEWSWORKER_*,
    the given settings (keys without the prefix) added."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSWORKER_")}
    env["NEWSWORKER_VAR_DIR"] = str(var_dir)
    # Every test site is one local server standing in for many hosts: no per-host delay
    # unless a test asks for one (tests/test_politeness.py and the politeness service test do).
    env["NEWSWORKER_POLITE_MIN_DELAY"] = "0"
    env["NEWSWORKER_POLITE_MAX_CONCURRENT"] = "8"
    env.update({f"NEWSWORKER_{k.upper()}": v for k, v in settings.items()})
    return env


def cli(env: dict[str, str], *args: str, check: bool = True, input: str | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "worker", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, input=input, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"newsworker {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def add_sample_site(env: dict[str, str], devserver: Any, *, inline_fetch: bool = True) -> str:
    """Upgrade the database, add the sample site's feeds (worker.demo, served by *devserver*)
    and, unless told not to, ingest them --inline.  Returns the fetch's summary output."""
    from worker.demo import mount_site

    cli(env, "db", "upgrade")
    for url in mount_site(devserver):
        cli(env, "feeds", "add", url)
    return cli(env, "fetch", "--all", "--inline").stdout if inline_fetch else ""


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class WorkerProcess:
    """`newsworker worker` in a subprocess; its log goes to a file for post-mortems."""

    command: tuple[str, ...] = ("worker",)
    ready_marker = " ready."            # what the log says once the process does its work
    what = "the worker"

    def __init__(self, env: dict[str, str], *args: str, log: Path):
        self.log_path = log
        self._log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "worker", *self.command, "--loglevel", "INFO", *args],
                                     env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.env = env

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.what} exited with {self.proc.returncode}:\n{self.log()}")
            if self.ready_marker in self.log():
                return
            time.sleep(0.2)
        raise AssertionError(f"{self.what} was not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 60) -> str:
        """The last *lines* lines of the log, for failure messages."""
        return "\n".join(self.log().splitlines()[-lines:])

    def running(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int, group: bool = False) -> None:
        """Send *sig* to the main process, or with *group* to every process of it (pool
        children included), as ``kill -SIG -PGID`` or systemd's default KillMode do."""
        if self.proc.poll() is None:
            try:
                (os.killpg if group else os.kill)(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL the whole process group: the main process and its pool children die at once."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code, or None if the process is still running after *timeout* seconds."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


class BeatProcess(WorkerProcess):
    """`newsworker beat` in a subprocess; its log goes to a file for post-mortems."""

    command = ("beat",)
    ready_marker = "beat: Starting..."
    what = "beat"


def fetch_through_worker(env: dict[str, str], log: Path, *fetch_args: str) -> tuple[str, str]:
    """Start a worker (two processes), run ``newsworker fetch … --wait`` through it (by
    default ``--all``), stop it; returns (the fetch's output, the worker's log)."""
    worker = WorkerProcess(env, "--concurrency", "2", log=log)
    try:
        worker.wait_ready()
        out = cli(env, "fetch", *(fetch_args or ("--all",)), "--wait", "--timeout", "300").stdout
    finally:
        worker.stop()
    return out, worker.log()
