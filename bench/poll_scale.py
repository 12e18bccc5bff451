"""One full poll cycle of 10,000 feeds through Celery (issue 6).

10,000 feeds on a few hundred local hosts (bench/fakehosts.py: 90% unchanged and
answering 304, 5% with new items, 1% ignoring conditional GET, the rest failing with
500, 404, 429 + Retry-After, or slow), stored on PostgreSQL as after an earlier poll
(validators kept).  The real dispatcher claims the due feeds and queues their polls on
Redis; one worker with two processes (``newsworker worker --concurrency 2 --queues
feeds``) polls them with the default politeness (per host, on Redis: 2 requests in
flight, 1 s from the end of one request to the start of the next).  The cycle ends when every feed has a fetch event.

Printed: feeds per second (all, and unchanged ones), requests per host per second, and
what the hosts saw: the most requests in flight at once and the shortest gap between
two requests to one host (the per-host limit, checked by the server, not by us).

    python bench/poll_scale.py [--feeds 10000] [--hosts 400]"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import fakehosts  # noqa: E402
from common import machine_reference  # noqa: E402
from worker.settings import Settings  # noqa: E402


def start_hosts(hosts: int, feeds: int) -> tuple[subprocess.Popen, int, list[int]]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "fakehosts.py"), "--hosts", str(hosts),
                             "--feeds", str(feeds)], stdout=subprocess.PIPE, text=True)
    control = int(proc.stdout.readline())
    ports = [int(p) for p in proc.stdout.readline().split()]
    return proc, control, ports


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live children (Linux /proc), in seconds."""
    total = 0.0
    pids = [pid] + [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


MIN_DELAY = Settings.model_fields["polite_min_delay"].default   # the bench runs with the default


def politeness_bound(hosts: int, feeds: int) -> float:
    """The shortest possible cycle under the per-host limit: each host's requests one
    after another, MIN_DELAY from the end of one to the start of the next."""
    busy: dict[int, float] = Counter()
    for i in range(feeds):
        slow = fakehosts.SLOW_SECONDS if fakehosts.kind_of(i) == fakehosts.KIND_SLOW else 0.0
        busy[fakehosts.host_of(i, hosts, feeds)] += MIN_DELAY + slow
    return max(busy.values()) - MIN_DELAY


def host_stats(control: int) -> dict[int, dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{control}/stats", timeout=30) as r:
        return {int(p): s for p, s in json.load(r).items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--feeds", type=int, default=10_000)
    ap.add_argument("--hosts", type=int, default=400)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--concurrency", type=int, default=2, help="worker processes (the issue's figure is for 2)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a newsworker setting for this run, e.g. --set poll_threads=32")
    args = ap.parse_args()

    import redis as redis_lib
    import sqlalchemy as sa

    from tests.support.proc import WorkerProcess
    from tests.support.services import create_database, drop_database, ensure_postgres, ensure_redis

    admin = ensure_postgres()
    db_url = create_database(admin)
    redis_url = ensure_redis() + "/12"
    redis_lib.Redis.from_url(redis_url).flushdb()
    server, control, ports = start_hosts(args.hosts, args.feeds)
    var = Path(tempfile.mkdtemp(prefix="nw-bench-poll-"))
    settings = {
        "NEWSWORKER_VAR_DIR": str(var), "NEWSWORKER_DATABASE_URL": db_url, "NEWSWORKER_BROKER_URL": redis_url,
        "NEWSWORKER_RESULT_BACKEND": redis_url,
        "NEWSWORKER_ALLOWED_PRIVATE_HOSTS": ",".join(f"127.0.0.1:{p}" for p in ports),
    }   # politeness: the defaults (2 in flight, 1 s apart per host)
    settings.update({f"NEWSWORKER_{k.upper()}": v for k, v in (item.split("=", 1) for item in args.set)})
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSWORKER_")} | settings
    os.environ.update(settings)         # the dispatcher runs in this process
    worker = None
    try:
        from worker import tasks
        from worker.migrate import upgrade
        from worker.models import Feed, utcnow

        upgrade(db_url)
        now = utcnow()
        engine = sa.create_engine(db_url)
        rows = []
        rng = random.Random(6)
        for i in range(args.feeds):
            port = ports[fakehosts.host_of(i, args.hosts, args.feeds)]
            body = fakehosts.feed_body(i, 0).replace(b"{host}", f"127.0.0.1:{port}".encode())
            rows.append({"url": f"http://127.0.0.1:{port}/feed/{i}.xml", "title": f"Feed {i}", "enabled": True,
                         "error_count": 0, "permanent_failures": 0, "moved_seen": 0, "created_at": now,
                         "etag": fakehosts.etag_of(i), "body_sha256": hashlib.sha256(body).hexdigest(),
                         # due at moments spread over the last five minutes, as jittered schedules are
                         "next_fetch_at": now - timedelta(seconds=rng.uniform(1, 300))})
        with engine.begin() as conn:
            conn.execute(sa.insert(Feed), rows)
            conn.execute(sa.text("ANALYZE feeds"))

        worker = WorkerProcess(env, "--concurrency", str(args.concurrency), "--queues", "feeds", log=var / "worker.log")
        worker.wait_ready()
        cpu0 = cpu_seconds(worker.proc.pid), cpu_seconds(server.pid)
        t0 = time.perf_counter()
        dispatched = tasks.dispatch_due_feeds()
        t_dispatch = time.perf_counter() - t0
        deadline = time.monotonic() + args.timeout
        polled = 0
        with engine.connect() as conn:
            while time.monotonic() < deadline:
                polled = conn.execute(sa.text("select count(distinct feed_id) from fetch_events")).scalar()
                if polled >= args.feeds or not worker.running():
                    break
                time.sleep(0.2)
        cycle = time.perf_counter() - t0
        cpu = cpu_seconds(worker.proc.pid) - cpu0[0], cpu_seconds(server.pid) - cpu0[1]
        with engine.connect() as conn:
            outcomes = Counter(dict(conn.execute(sa.text(
                "select outcome || ' ' || coalesce(http_status::text, '-'), count(*) from fetch_events group by 1"))
                .all()))
            first_last = conn.execute(sa.text("select min(started_at), max(finished_at) from fetch_events")).one()
        stats = host_stats(control)
        engine.dispose()
    finally:
        if worker:
            worker.stop()
        server.terminate()
        drop_database(admin, db_url)
    unchanged = sum(n for k, n in outcomes.items() if k.startswith("not_modified"))
    busiest = max(stats.values(), key=lambda s: s["requests"])
    span = max((s["last"] - s["first"]) for s in stats.values() if s["requests"] > 1)
    gaps = [s["min_gap"] for s in stats.values() if s["min_gap"] is not None]
    print(machine_reference())
    print(f"feeds: {args.feeds} on {len(ports)} hosts, {args.concurrency} worker processes; dispatched {dispatched} in {t_dispatch:.1f} s; "
          f"polled {polled} in {cycle:.1f} s")
    print("outcomes: " + ", ".join(f"{k}: {n}" for k, n in sorted(outcomes.items())))
    print(f"throughput: {polled / cycle:.0f} feeds/s, {unchanged / cycle:.0f} unchanged feeds/s (target >= 300)")
    total = sum(s["requests"] for s in stats.values())
    print(f"per host: {total / len(stats) / cycle:.2f} requests/s on average; "
          f"{busiest['requests']} requests on the busiest host in {span:.1f} s = "
          f"{busiest['requests'] / max(span, 1e-9):.2f} requests/s; most in flight at once on any host: "
          f"{max(s['max_in_flight'] for s in stats.values())} (limit 2); shortest gap between two requests to "
          f"one host: {min(gaps):.3f} s (limit 1.0)")
    print(f"CPU: worker processes {cpu[0]:.1f} s ({1000 * cpu[0] / max(polled, 1):.2f} ms a feed), "
          f"the fake hosts {cpu[1]:.1f} s, of {2 * cycle:.0f} core-seconds in the cycle")
    print(f"first poll started {first_last[0]}, last finished {first_last[1]}")
    print(f"the per-host limit alone holds a cycle to at least {politeness_bound(args.hosts, args.feeds):.1f} s "
          f"(the busiest host's feeds one after another, {MIN_DELAY:.0f} s apart, slow answers included)")
    too_close = {p: s for p, s in stats.items() if s["min_gap"] is not None and s["min_gap"] < MIN_DELAY}
    for port, s in sorted(too_close.items(), key=lambda item: item[1]["min_gap"]):
        print(f"PER-HOST DELAY NOT KEPT on 127.0.0.1:{port}: {s['requests']} requests, shortest gap "
              f"{s['min_gap']:.3f} s, answers {s['statuses']}; worker log: {var / 'worker.log'}")
    if polled < args.feeds:
        print(f"NOT FINISHED: {args.feeds - polled} feeds without a poll; worker log: {var / 'worker.log'}")
        sys.exit(1)


if __name__ == "__main__":
    main()
