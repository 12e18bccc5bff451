"""The read API over 100,000 stored articles on PostgreSQL (issue 7: p95 under 50 ms for a
page of 50).  Articles are real news texts from the corpus (SemEval-2022 news pairs and the
labelled defence stories), tagged and entity-linked by the project's own tagger once per
distinct text, then stored many times over under distinct URLs and dates, with 50 feeds.
A real API server (``newsworker api``) answers; clients in threads request:

- the article list filtered by tag (``/articles?tag=defence&limit=50``), first pages and
  pages deep in the cursor walk,
- a full-text search (``/articles?q=…&limit=50``), several queries, alone and with a filter,
- the store function behind them, in-process (the HTTP and JSON layer's share is the rest).

Each list is requested by one client (latency alone) and by --clients at once (throughput;
on this 2-core machine the clients, the API and PostgreSQL share the cores).

    python bench/api_bench.py [--articles 100000] [--requests 400] [--clients 4] [--api-workers 2]
                              [--database-url URL]   # reuse a loaded database"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SEARCHES = ["defence minister", "election", '"prime minister"', "military exercises", "football or cricket",
            "oil prices -opec", "президент"]


def corpus_texts(corpus: Path) -> list[tuple[str, str]]:
    """(title, text) of every distinct corpus news text: the labelled stories and both sides
    of the SemEval pairs (titles: their first sentence, as those texts carry none)."""
    out: dict[str, tuple[str, str]] = {}
    for line in (corpus / "news" / "defence-dev.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        out[r["text"]] = (r["title"] or r["text"][:80], r["text"])
    with gzip.open(corpus / "dupes" / "semeval2022-task8" / "training_set.csv.gz", "rt", encoding="utf-8") as f:
        csv.field_size_limit(10_000_000)
        for r in csv.DictReader(f):
            for key in ("text1", "text2"):
                text = (r.get(key) or "").strip()
                if len(text) > 200:
                    out[text] = (text.split(". ")[0][:120], text)
    return list(out.values())


def analyse(texts: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Language, tags and entities of each distinct text, by the pipeline's own functions."""
    from worker import entities, tagging
    from worker.extract import detect_language

    tagger, finder = tagging.load_tagger(), entities.load_entity_rules()
    out = []
    for title, text in texts:
        lang = detect_language(f"{title}\n{text}")
        tags = tagger.tag(title, text, lang)
        out.append({"title": title, "text": text, "language": lang, "tags": tags,
                    "entities": finder.extract(title, text, lang)})
    return out


def load(url: str, docs: list[dict[str, Any]], n: int) -> None:
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql

    from worker.db import get_engine
    from worker.models import Article, ArticleEntity, ArticleFeed, Feed, Story, Tag, utcnow

    engine, now, rng = get_engine(url), utcnow(), random.Random(7)
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    with engine.begin() as conn:
        feed_ids = conn.execute(sa.insert(Feed).returning(Feed.id), [
            {"url": f"https://outlet{i}.example/rss", "enabled": True, "error_count": 0, "permanent_failures": 0,
             "moved_seen": 0, "created_at": now, "next_fetch_at": now} for i in range(50)]).scalars().all()
    batch = 5000
    for start in range(0, n, batch):
        rows, picks = [], []
        for i in range(start, min(n, start + batch)):
            d = docs[i % len(docs)] if i < len(docs) else rng.choice(docs)
            picks.append(d)
            rows.append({"url": f"https://news.example/{i}", "canonical_url": f"https://news.example/{i}",
                         "title": d["title"], "text": d["text"], "language": d["language"], "text_source": "page",
                         "feed_id": feed_ids[i % 50], "published_at": t0 + timedelta(minutes=5 * i),
                         "fetched_at": now, "created_at": now, "extracted_at": now})
        with engine.begin() as conn:
            stories = conn.execute(sa.insert(Story).returning(Story.id), [{"created_at": now}] * len(rows)).scalars().all()
            for r, sid in zip(rows, stories):
                r["story_id"] = sid
            ids = conn.execute(sa.insert(Article).returning(Article.id), rows).scalars().all()
            conn.execute(sa.insert(ArticleFeed), [{"article_id": a, "feed_id": r["feed_id"], "first_seen_at": now}
                                                  for a, r in zip(ids, rows)])
            tags = [{"article_id": a, "name": t.name, "score": t.score, "evidence": list(t.evidence),
                     "details": t.details, "iptc_code": t.iptc_code, "tagger_version": "bench", "created_at": now} for a, d in zip(ids, picks) for t in d["tags"]]
            if tags:
                conn.execute(postgresql.insert(Tag).on_conflict_do_nothing(), tags)
            ents = [{"article_id": a, "kind": e.kind, "name": e.name, "code": e.code, "role": e.role, "rank": e.rank,
                     "evidence": list(e.evidence), "mentions": e.mentions, "tagger_version": "bench", "created_at": now}
                    for a, d in zip(ids, picks) for e in d["entities"]]
            if ents:
                conn.execute(postgresql.insert(ArticleEntity).on_conflict_do_nothing(), ents)   # as the pipeline's insert_ignore
            conn.execute(sa.update(Story).where(Story.id.in_(stories)).values(
                representative_article_id=sa.select(Article.id).where(Article.story_id == Story.id).scalar_subquery()))
    # What autovacuum does to a table after many inserts (PostgreSQL 13+), done now rather
    # than racing the measurement: statistics, and the visibility map that lets index
    # scans skip heap checks.  A running service's tables are in this state.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("articles", "tags", "entities", "article_feeds", "stories"):
            conn.execute(sa.text(f"VACUUM ANALYZE {table}"))


def percentiles(ms: list[float]) -> str:
    ms = sorted(ms)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return f"p50 {statistics.median(ms):6.1f} ms  p95 {p95:6.1f} ms"


def hammer(base: str, paths: list[str], requests: int, clients: int) -> tuple[float, list[float]]:
    """*requests* GETs spread over *clients* threads (each its own connection); every answer
    must be 200 with 50 articles or fewer.  Returns (requests per second, latencies in ms)."""
    import httpx

    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []

    def run(k: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            for j in range(k, requests, clients):
                path = paths[j % len(paths)]
                t = time.perf_counter()
                r = client.get(path)
                dt = (time.perf_counter() - t) * 1000
                if r.status_code != 200:
                    errors.append(f"{path}: {r.status_code} {r.text[:200]}")
                with lock:
                    latencies.append(dt)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"the API failed {len(errors)} requests, first: {errors[0]}")
    return requests / wall, latencies


def cursor_paths(base: str, first: str, pages: int) -> list[str]:
    """The first *pages* page paths of a cursor walk (deep pages cost what the first costs)."""
    import httpx

    paths, path = [], first
    with httpx.Client(base_url=base, timeout=60) as client:
        for _ in range(pages):
            paths.append(path)
            body = client.get(path).json()
            if not body.get("next_cursor"):
                break
            sep = "&" if "?" in first else "?"
            path = f"{first}{sep}cursor={body['next_cursor']}"
    return paths


def store_timing(url: str, calls: list[dict[str, Any]], rounds: int = 3) -> list[float]:
    from worker.db import session_scope
    from worker.store import query_articles

    ms = []
    for _ in range(rounds):
        for kw in calls:
            t = time.perf_counter()
            with session_scope(url) as s:
                query_articles(s, limit=50, **kw)
            ms.append((time.perf_counter() - t) * 1000)
    return ms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--articles", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--database-url", help="an already loaded database (skips loading; kept afterwards)")
    ap.add_argument("--api-workers", type=int, default=2, help="newsworker api --workers (one per core)")
    args = ap.parse_args()

    from common import corpus_dir, machine_reference
    from tests.support.services import create_database, drop_database, ensure_postgres
    from worker.migrate import upgrade

    print(machine_reference())
    admin = ensure_postgres()
    url = args.database_url or create_database(admin)
    server = None
    try:
        if not args.database_url:
            t = time.perf_counter()
            docs = analyse(corpus_texts(corpus_dir()))
            share = sum(any(tg.name == "defence" for tg in d["tags"]) for d in docs) / len(docs)
            print(f"{len(docs)} distinct corpus texts analysed in {time.perf_counter() - t:.0f} s "
                  f"({share:.0%} tagged defence)")
            upgrade(url)
            t = time.perf_counter()
            load(url, docs, args.articles)
            print(f"{args.articles} articles stored on PostgreSQL in {time.perf_counter() - t:.0f} s")

        calls = [{"tag": "defence"}, *({"q": q} for q in SEARCHES), {"q": "minister", "tag": "defence"}]
        print(f"store.query_articles in-process: {percentiles(store_timing(url, calls))}")

        env = {**os.environ, "NEWSWORKER_DATABASE_URL": url}
        server = subprocess.Popen([sys.executable, "-m", "worker", "api", "--host", "127.0.0.1", "--port", str(args.port),
                                   "--workers", str(args.api_workers)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        base = f"http://127.0.0.1:{args.port}"
        _wait_up(base, server)
        listing = cursor_paths(base, "/articles?tag=defence&limit=50", 40)
        searches = [f"/articles?q={q}&limit=50" for q in SEARCHES] + ["/articles?q=minister&tag=defence&limit=50"]
        for name, paths in [("tag=defence, first page", listing[:1]),
                            (f"tag=defence, cursor pages 1-{len(listing)}", listing),
                            (f"q= full-text search ({len(searches)} queries)", searches)]:
            hammer(base, paths, min(40, args.requests), args.clients)            # warm up
            for clients in sorted({1, args.clients}):     # latency alone, then under concurrent load
                rps, ms = hammer(base, paths, args.requests, clients)
                print(f"GET {name:38s} {rps:7.1f} req/s  {percentiles(ms)}  "
                      f"({clients} client{'s' if clients > 1 else ''}, {args.api_workers} server processes)")
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        if not args.database_url:
            drop_database(admin, url)


def _wait_up(base: str, server: subprocess.Popen) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"newsworker api exited: {server.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{base}/openapi.json", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit("newsworker api did not answer within 60 s")


if __name__ == "__main__":
    main()
