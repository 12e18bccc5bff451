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

import psycopg
import redis
from psycopg import sql
from sqlalchemy.engine import make_url

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


def start_redis(timeout: float = 15) -> str:
    """Start a throwaway, non-persistent redis-server; stopped at interpreter exit."""
    binary = shutil.which("redis-server")
    if not binary:
        raise RuntimeError("redis-server not found: install it (Debian/Ubuntu: apt-get install redis-server)")
    tmp = tempfile.mkdtemp(prefix="nw-redis-")
    port = free_port()
    log = open(Path(tmp) / "redis.log", "wb")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", tmp], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def cleanup() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)

    atexit.register(cleanup)
    url = f"redis://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while not _redis_answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            output = (Path(tmp) / "redis.log").read_text(errors="replace")[-2000:]
            cleanup()
            raise RuntimeError(f"throwaway redis-server on port {port} did not start:\n{output}")
        time.sleep(0.05)
    return url


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
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    as_user: list[str] = []
    tmp = tempfile.mkdtemp(prefix="nw-pg-", dir="/tmp" if os.geteuid() == 0 else None)
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            pg = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("running as root and there is no 'postgres' user to run initdb as "
                               "(Debian/Ubuntu: apt-get install postgresql creates it)") from None
        os.chown(tmp, pg.pw_uid, pg.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log = f"{tmp}/data", f"{tmp}/postgres.log"
    port = free_port()

    def run(*cmd: str) -> None:
        done = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            tail = Path(log).read_text(errors="replace")[-2000:] if Path(log).exists() else ""
            raise RuntimeError(f"{' '.join(cmd[:2])} failed ({done.returncode}):\n{done.stdout}{done.stderr}{tail}")

    def cleanup() -> None:
        if Path(data, "postmaster.pid").exists():
            subprocess.run([*as_user, pg_ctl, "-D", data, "stop", "-m", "immediate"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)

    try:
        run(initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions")
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {tmp} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        run(pg_ctl, "-D", data, "-l", log, "-o", options, "-w", "-t", str(int(timeout)), "start")
    except BaseException:
        cleanup()
        raise
    atexit.register(cleanup)
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    if not _pg_answers(url):
        raise RuntimeError(f"throwaway PostgreSQL on port {port} started but does not accept connections")
    return url


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
