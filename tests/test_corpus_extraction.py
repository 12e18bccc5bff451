"""Real pages: the 181 Zyte benchmark articles served locally behind a feed and
ingested; stored text must be no worse than trafilatura.extract on the same pages."""

from __future__ import annotations

import sqlite3

import pytest
import trafilatura

from bench.common import token_f1, zyte_pages
from tests.support.proc import base_env, cli
from worker.devserver import mount_zyte_corpus

pytestmark = pytest.mark.corpus


def test_ingested_text_is_at_least_as_good_as_plain_trafilatura(corpus_dir, devserver, tmp_path):
    mount_zyte_corpus(devserver, corpus_dir)
    env = base_env(tmp_path, allowed_private_hosts=devserver.host_port)
    cli(env, "db", "upgrade")
    cli(env, "feeds", "add", f"{devserver.base_url}/zyte/feed.xml")
    out = cli(env, "fetch", "--all", "--inline").stdout
    assert "failures: 0" in out

    pages = zyte_pages(corpus_dir)
    with sqlite3.connect(tmp_path / "newsworker.db") as db:
        stored = dict(db.execute("select guid, text from articles").fetchall())
        sources = dict(db.execute("select text_source, count(*) from articles group by text_source").fetchall())
    assert len(stored) == len(pages) == 181
    ours = sum(token_f1(stored[h], body) for h, _, _, body in pages) / len(pages)
    direct = sum(token_f1(trafilatura.extract(html, url=url) or "", body) for _, url, html, body in pages) / len(pages)
    print(f"\ntoken F1 on {len(pages)} Zyte pages: newsworker {ours:.4f}, trafilatura.extract {direct:.4f}; "
          f"text sources {sources}")
    assert ours >= direct
