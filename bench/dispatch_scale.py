"""The dispatcher's due-feed claim with 100,000 feeds stored on PostgreSQL (issue:
under 50 ms).  Feeds get spread-out next_fetch_at values, about 1% due at once; the
claim (``store.claim_due_feeds``: an indexed select with FOR UPDATE SKIP LOCKED and an
UPDATE … RETURNING) is timed over repeated cycles, releasing the claims in between.

    python bench/dispatch_scale.py [--feeds 100000] [--rounds 20]"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--feeds", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--limit", type=int, default=1000)
    args = ap.parse_args()

    import sqlalchemy as sa

    from tests.support.services import create_database, drop_database, ensure_postgres
    from worker import store
    from worker.db import get_engine, session_scope
    from worker.migrate import upgrade
    from worker.models import Feed, utcnow
    from common import machine_reference

    admin = ensure_postgres()
    url = create_database(admin)
    try:
        upgrade(url)
        now = utcnow()
        engine = get_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.insert(Feed), [
                {"url": f"https://host{i % 5000}.example/feed/{i}.xml", "enabled": i % 50 != 0, "error_count": 0,
                 "permanent_failures": 0, "moved_seen": 0, "created_at": now,
                 # ~1% due now, the rest spread over the next day
                 "next_fetch_at": now - timedelta(seconds=i % 60) if i % 100 == 1 else now + timedelta(seconds=i % 86_400)}
                for i in range(args.feeds)
            ])
            conn.execute(sa.text("ANALYZE feeds"))
        timings = []
        claimed = 0
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            with session_scope(url) as s:
                ids = [i for i, _ in store.claim_due_feeds(s, now, now - timedelta(seconds=900), args.limit)]
            timings.append((time.perf_counter() - t0) * 1000)
            claimed = len(ids)
            with session_scope(url) as s:          # release, so every round claims the same amount
                s.execute(sa.update(Feed).where(Feed.id.in_(ids)).values(queued_at=None))
        due_query = store.due_feeds(now, now - timedelta(seconds=900), args.limit, "postgresql")
        selects = []
        with engine.connect() as conn:
            for _ in range(args.rounds):    # the due-feed query alone (its locks dropped by the rollback)
                t0 = time.perf_counter()
                with conn.begin() as tx:
                    selected = len(conn.execute(due_query).all())
                    tx.rollback()
                selects.append((time.perf_counter() - t0) * 1000)
            compiled = due_query.compile(engine, compile_kwargs={"literal_binds": True})
            plan = conn.execute(sa.text(f"EXPLAIN {compiled}")).scalars().all()
        engine.dispose()
        timings.sort()
        print(machine_reference())
        print(f"feeds stored: {args.feeds}; due and claimed per round: {claimed}")
        print(f"claim (select + mark, one transaction): median {statistics.median(timings):.1f} ms, "
              f"p95 {timings[int(0.95 * (len(timings) - 1))]:.1f} ms, max {timings[-1]:.1f} ms "
              f"over {args.rounds} rounds (target < 50 ms)")
        print(f"the due-feed query alone ({selected} rows, select ... for update skip locked): median {statistics.median(selects):.1f} ms, "
              f"max {max(selects):.1f} ms")
        print("plan: " + " / ".join(line.strip() for line in plan[:4]))
    finally:
        drop_database(admin, url)


if __name__ == "__main__":
    main()
