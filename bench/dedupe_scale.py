"""Deduplication at scale, on PostgreSQL: the cost of checking and storing one article
(near-copy lookup through the band index, then the insert) with 10,000 and with
100,000 articles already stored, and the process's memory at both sizes.

The stored articles are synthetic (random MinHash signatures: their bands are spread
like real ones); the measured articles are the real Zyte benchmark texts."""

from __future__ import annotations

import io
import multiprocessing
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402

from bench.common import zyte_pages  # noqa: E402
from worker import store  # noqa: E402
from worker.db import get_engine, session_scope  # noqa: E402
from worker.dedupe import NUM_PERM, Fingerprint, content_hash, fingerprint  # noqa: E402
from worker.migrate import upgrade  # noqa: E402

SIZES = (10_000, 100_000)
MEASURED = 150


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fill(url: str, feed_id: int, start: int, stop: int, rng: random.Random) -> None:
    """Bulk-load synthetic articles [start, stop) with their band rows (COPY)."""
    engine = get_engine(url)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        arts, bands = io.StringIO(), io.StringIO()
        for i in range(start, stop):
            fp = Fingerprint(tuple(rng.getrandbits(32) for _ in range(NUM_PERM)), 500)
            blob = "\\\\x" + fp.to_bytes().hex()
            arts.write(f"{i + 1}\thttp://synthetic.example/{i}\thttp://synthetic.example/{i}\t{feed_id}\t"
                       f"synthetic {i}\t\tpage\t{blob}\t2024-01-01 00:00:00+00\t2024-01-01 00:00:00+00\n")
            for h in sorted(set(fp.bands())):
                bands.write(f"{h}\t{i + 1}\n")
        arts.seek(0)
        bands.seek(0)
        with cur.copy("COPY articles (id, url, canonical_url, feed_id, title, text, text_source, fingerprint, "
                      "fetched_at, created_at) FROM STDIN") as cp:
            cp.write(arts.read())
        with cur.copy("COPY story_bands (band_hash, article_id) FROM STDIN") as cp:
            cp.write(bands.read())
        cur.execute("SELECT setval(pg_get_serial_sequence('articles', 'id'), %s)", (stop + 1_000_000,))
        cur.execute("ANALYZE articles")
        cur.execute("ANALYZE story_bands")
        raw.commit()
    finally:
        raw.close()


def measure(url: str, feed_id: int, texts: list[str], round_no: int) -> float:
    """Mean ms to check and store one article (one transaction each); the rows are removed after."""
    ids, elapsed = [], 0.0
    for i, text in enumerate(texts):
        text = f"Round {round_no}. {text}"
        draft = store.ArticleDraft(url=f"http://measured.example/{round_no}/{i}", canonical_url=f"http://measured.example/{round_no}/{i}",
                                   text=text, text_source="page", title=f"measured {i}",
                                   content_hash=content_hash(text), fingerprint=fingerprint(text))
        t0 = time.perf_counter()
        with session_scope(url) as s:
            aid, _ = store.save_article(s, draft, feed_id, [], [], "bench")
        elapsed += time.perf_counter() - t0
        ids.append(aid)
    with session_scope(url) as s:
        s.execute(sa.text("DELETE FROM articles WHERE id = ANY(:ids)"), {"ids": ids})
        s.execute(sa.text("DELETE FROM stories WHERE NOT EXISTS (SELECT 1 FROM articles a WHERE a.story_id = stories.id)"))
    return 1000 * elapsed / len(texts)


def main() -> None:
    from tests.support.services import create_database, drop_database, ensure_postgres

    admin = ensure_postgres()
    url = create_database(admin)
    try:
        upgrade(url)
        with session_scope(url) as s:
            feed_id = store.add_feed(s, "http://synthetic.example/feed.xml")[0].id
        texts = [body for _, _, _, body in zyte_pages() if len(body.split()) > 100][:MEASURED]
        measure(url, feed_id, texts[:10], 0)     # warm caches and connections
        rng = random.Random(7)
        stored, results = 0, []
        for size in SIZES:
            t0 = time.perf_counter()
            # Loaded by a child process, so this process's memory is the check-and-store path alone.
            loader = multiprocessing.get_context("fork").Process(target=fill, args=(url, feed_id, stored, size, rng))
            loader.start()
            loader.join()
            if loader.exitcode:
                raise SystemExit(f"bench: loading synthetic articles failed (exit {loader.exitcode})")
            rng.seed(size)
            stored = size
            load = time.perf_counter() - t0
            ms = measure(url, feed_id, texts, size)
            results.append((size, ms, rss_mib()))
            print(f"{size:>7,} stored (loaded in {load:.0f} s): {ms:.2f} ms to check and store one article, "
                  f"RSS {results[-1][2]:.0f} MiB", flush=True)
        (s1, ms1, r1), (s2, ms2, r2) = results
        print(f"ratio at {s2:,} / {s1:,}: {ms2 / ms1:.2f} (target ≤ 1.5); RSS change {r2 - r1:+.0f} MiB")
    finally:
        get_engine(url).dispose()
        drop_database(admin, url)


if __name__ == "__main__":
    main()
