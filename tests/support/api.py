"""`newsworker api` as a real server: a uvicorn process on a free 127.0.0.1 port, called
over HTTP, as a browser, curl or Prometheus would.

    with api_server(database_url, tmp_path, api_token="t") as api:
        api.client.get("/feeds").json()
"""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

from tests.support.proc import ROOT, base_env, cli
from tests.support.services import create_database, drop_database, ensure_postgres, free_port
from worker.demo import mount_site
from worker.devserver import DevServer


class ApiServer:
    """One `newsworker api` process; its log goes to a file for post-mortems."""

    def __init__(self, env: dict[str, str], log: Path):
        self.env = env
        self.log_path = log
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.client: httpx.Client | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> ApiServer:
        # A free port can be taken between the check and the bind: try another one then.
        for _ in range(3):
            self.port = free_port()
            with open(self.log_path, "a") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "worker", "api", "--host", "127.0.0.1", "--port", str(self.port)],
                    env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            if self._wait_ready(timeout):
                self.client = httpx.Client(base_url=self.base_url, timeout=30)
                return self
            if "address already in use" not in self.log().lower():
                break
        self.stop()
        raise AssertionError(f"`newsworker api` did not answer on {self.base_url}/healthz within {timeout} s:\n"
                             f"{self.log()[-4000:]}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def api_server(database_url: str, var_dir: Path, **settings: str) -> Iterator[ApiServer]:
    """The API on *database_url* (already migrated); *settings* as in
    :func:`tests.support.proc.base_env` (``api_token``, ``broker_url``, …)."""
    env = base_env(var_dir, database_url=database_url, **settings)
    with ApiServer(env, log=Path(var_dir) / f"api-{time.monotonic_ns()}.log") as server:
        yield server


@contextmanager
def sample_site_database(var_dir: Path, *, extra_feed_name: str = "Broken feed") -> Iterator[str]:
    """A PostgreSQL database of its own holding the sample site (demo/site: three feeds,
    five articles, two defence stories, the seed story among them) and a fourth feed that
    answers 404, named *extra_feed_name* — all ingested by the real pipeline
    (`newsworker fetch --all --inline`).  Yields its URL; dropped afterwards."""
    admin = ensure_postgres()
    url = create_database(admin)
    try:
        with DevServer() as dev:
            env = base_env(var_dir, database_url=url, allowed_private_hosts=dev.host_port)
            cli(env, "db", "upgrade")
            for feed_url in mount_site(dev):
                cli(env, "feeds", "add", feed_url)
            cli(env, "feeds", "add", f"{dev.base_url}/feeds/missing.xml", "--no-discover", "--name", extra_feed_name)
            summary = cli(env, "fetch", "--all", "--inline").stdout
            assert "articles new: 5, failures: 1" in summary, summary
        yield url
    finally:
        drop_database(admin, url)
