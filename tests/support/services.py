"""Real Redis and PostgreSQL for the tests, with no manual setup.

Each ``ensure_*`` uses the server on its standard local port when one answers, and
otherwise starts a throwaway one (temp dir, free port) that is stopped at exit.
A missing server binary is an error naming the Debian package, never a skip."""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg import sql
from sqlalchemy.engine import make_url

# The tests' Redis db: a number of its own, so flushing it spares anything else on the server
# (NEWSWORKER_TEST_REDIS_DB runs two suites side by side).
REDIS_TEST_DB = int(os.environ.get("NEWSWORKER_TEST_REDIS_DB", "11"))

_lock = threading.Lock()
_cache: dict[str, str] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- Redis

def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2).ping())
    except (redis.RedisError, OSError):
        return False


def ensure_redis() -> str:
    """``redis://127.0.0.1:PORT`` (no db number: callers pick theirs)."""
    with _lock:
        if "redis" not in _cache:
            url = "redis://127.0.0.1:6379"
            _cache["redis"] = url if _redis_answers(url) else start_redis()
        return _cache["redis"]


def _start_throwaway(server: Any, timeout: float) -> Any:
    """Start *server*; it is cleaned up at interpreter exit, or now if it fails to start."""
    try:
        server.start(timeout)
    except BaseException:
        server.cleanup()
        raise
    atexit.register(server.cleanup)
    return server


def start_redis(timeout: float = 15) -> str:
    """Start a throwaway, non-persistent redis-server; stopped at interpreter exit."""
    return _start_throwaway(RedisServer(), timeout).url


class RedisServer:
    """A throwaway, non-persistent redis-server that can be stopped and started again
    on the same port (it keeps nothing on disk: a restart empties it).

        with RedisServer() as server:   # started; stopped and deleted at the end
            server.stop(); server.start()
    """

    def __init__(self, port: int | None = None):
        self.binary = shutil.which("redis-server")
        if not self.binary:
            raise RuntimeError("redis-server not found: install it (Debian/Ubuntu: apt-get install redis-server)")
        self.tmp = tempfile.mkdtemp(prefix="nw-redis-")
        self.port = port or free_port()
        self.log_path = Path(self.tmp) / "redis.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT`` (no db number: callers pick theirs)."""
        return f"redis://127.0.0.1:{self.port}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 15) -> RedisServer:
        if self.running():
            return self
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.tmp],
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not _redis_answers(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                output = self.log_path.read_text(errors="replace")[-2000:]
                self.stop(kill=True)
                raise RuntimeError(f"throwaway redis-server on port {self.port} did not start:\n{output}")
            time.sleep(0.05)
        return self

    def stop(self, kill: bool = False, timeout: float = 10) -> None:
        """Stop the server (SIGTERM, or SIGKILL: a crash); everything in it is lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


# ---------------------------------------------------------------- PostgreSQL

def _conninfo(url: str) -> str:
    """SQLAlchemy URL -> libpq URI (psycopg does not know the +psycopg driver suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _pg_answers(url: str) -> bool:
    try:
        with psycopg.connect(_conninfo(url), connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def ensure_postgres() -> str:
    """An admin URL, ``postgresql+psycopg://postgres@127.0.0.1:PORT/postgres``."""
    with _lock:
        if "postgres" not in _cache:
            url = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
            _cache["postgres"] = url if _pg_answers(url) else start_postgres()
        return _cache["postgres"]


def _pg_bin(name: str) -> str:
    # Debian keeps the server binaries off PATH, in /usr/lib/postgresql/<ver>/bin.
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version_key, reverse=True)), None)
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} not found: install the server "
                           "(Debian/Ubuntu: apt-get install postgresql)")
    return found


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parents[1].name
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def start_postgres(timeout: float = 60) -> str:
    """initdb + pg_ctl start a throwaway cluster (trust auth, fsync off) on a free port;
    stopped and deleted at interpreter exit."""
    server = _start_throwaway(PostgresServer(), timeout)
    if not _pg_answers(server.admin_url):
        raise RuntimeError(f"throwaway PostgreSQL on port {server.port} started but does not accept connections")
    return server.admin_url


class PostgresServer:
    """A throwaway PostgreSQL cluster (initdb on first start; trust auth, fsync off) on a
    fixed port, which can be stopped (``pg_ctl stop -m fast|immediate``) and started
    again on the same port with its data intact.

        with PostgresServer() as server:   # started; stopped and deleted at the end
            server.stop(); server.start()
    """

    def __init__(self, port: int | None = None):
        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        self.as_user: list[str] = []
        self.tmp = tempfile.mkdtemp(prefix="nw-pg-", dir="/tmp" if os.geteuid() == 0 else None)
        if os.geteuid() == 0:  # initdb refuses to run as root
            try:
                pg = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise RuntimeError("running as root and there is no 'postgres' user to run initdb as "
                                   "(Debian/Ubuntu: apt-get install postgresql creates it)") from None
            os.chown(self.tmp, pg.pw_uid, pg.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.data, self.log_path = f"{self.tmp}/data", f"{self.tmp}/postgres.log"
        self.port = port or free_port()
        self._initialised = False

    @property
    def admin_url(self) -> str:
        """``postgresql+psycopg://postgres@127.0.0.1:PORT/postgres``."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str, timeout: float = 60) -> None:
        done = subprocess.run([*self.as_user, *cmd], capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            tail = Path(self.log_path).read_text(errors="replace")[-2000:] if Path(self.log_path).exists() else ""
            raise RuntimeError(f"{' '.join(cmd[:2])} failed ({done.returncode}):\n{done.stdout}{done.stderr}{tail}")

    def running(self) -> bool:
        return Path(self.data, "postmaster.pid").exists()

    def start(self, timeout: float = 60) -> PostgresServer:
        """Start the cluster (creating it the first time); returns once it accepts connections."""
        if not self._initialised:
            self._run(self.initdb, "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync",
                      "--no-instructions", timeout=timeout)
            self._initialised = True
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.tmp} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        self._run(self.pg_ctl, "-D", self.data, "-l", self.log_path, "-o", options, "-w", "-t", str(int(timeout)),
                  "start", timeout=timeout + 10)
        return self

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """``pg_ctl stop -m MODE``: fast (sessions terminated, clean shutdown) or immediate (a crash)."""
        if self.running():
            self._run(self.pg_ctl, "-D", self.data, "stop", "-m", mode, "-w", "-t", str(int(timeout)),
                      timeout=timeout + 10)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def cleanup(self) -> None:
        if self.running():
            subprocess.run([*self.as_user, self.pg_ctl, "-D", self.data, "stop", "-m", "immediate"],
                           capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def create_database(admin_url: str) -> str:
    """Create a uniquely named database; returns its SQLAlchemy URL."""
    name = f"nw_test_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(_conninfo(admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    """Drop the database of *url*, even with sessions still connected to it."""
    name = make_url(url).database
    with psycopg.connect(_conninfo(admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def drop_queued_tasks(redis_url: str) -> None:
    """Delete the task messages a test queued but no worker consumed: a later test's
    worker on the same Redis db would otherwise run them against its own database."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete("feeds", "articles")
    finally:
        client.close()
