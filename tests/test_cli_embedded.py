"""The embedded default (SQLite, no server) driven through the CLI."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.proc import ROOT, base_env, cli, jsonl
from worker.demo import mount_site

SEED_TEXT = (Path(__file__).parent / "fixtures" / "seed_story.txt")


@pytest.fixture
def env(tmp_path, devserver):
    env = base_env(tmp_path, allowed_private_hosts=devserver.host_port)
    cli(env, "db", "upgrade")
    return env


def test_inline_fetch_then_conditional_get(env, devserver, tmp_path):
    for url in mount_site(devserver):
        cli(env, "feeds", "add", url)
    first = cli(env, "fetch", "--all", "--inline")
    assert "feeds polled: 3, entries seen: 7, articles new: 5, failures: 0" in first.stdout
    devserver.clear_requests()
    second = cli(env, "fetch", "--all", "--inline")
    assert "entries seen: 0, articles new: 0, failures: 0" in second.stdout
    assert [r.status for r in devserver.requests] == [304, 304, 304]

    with sqlite3.connect(tmp_path / "newsworker.db") as db:
        assert db.execute("select count(*) from articles").fetchone() == (5,)
        assert db.execute("select count(*) from fetch_events where outcome = 'not_modified'").fetchone() == (3,)

    defence = jsonl(cli(env, "articles", "list", "--tag", "defence", "--json").stdout)
    titles = {a["title"] for a in defence}
    # The title is the first listing's: the Atom feed (polled first) shortens the headline.
    assert any(t.startswith("Azerbaijani Defence Minister meets Turkish delegation") for t in titles)
    assert "Champions start title defence with late winner" not in titles
    assert all(set(a) >= {"id", "url", "canonical_url", "feed_url", "title", "text", "author", "published_at",
                          "language", "story_id", "tags"} for a in defence)
    assert not jsonl(cli(env, "articles", "list", "--since", "2030-01-01", "--json").stdout)

    health = jsonl(cli(env, "feeds", "list", "--json").stdout)
    assert {f["last_status"] for f in health} == {"not_modified"}
    assert all(f["last_success_at"] and f["next_fetch_at"] for f in health)


def test_failures_are_recorded_with_clear_errors(env, devserver):
    devserver.add("/broken.xml", b"<html><body>Not a feed at all</body></html>", content_type="text/html")
    # Discovery refuses both (no feed there); an operator can insist.
    refused = cli(env, "feeds", "add", f"{devserver.base_url}/broken.xml", check=False)
    assert refused.returncode == 1 and "no feed found" in refused.stderr and "--no-discover" in refused.stderr
    cli(env, "feeds", "add", f"{devserver.base_url}/broken.xml", "--no-discover")
    cli(env, "feeds", "add", f"{devserver.base_url}/gone.xml", "--name", "Gone", "--no-discover")
    out = cli(env, "fetch", "--all", "--inline", check=False)
    assert "failures: 2" in out.stdout
    feeds = {f["url"].rsplit("/", 1)[1]: f for f in jsonl(cli(env, "feeds", "list", "--json").stdout)}
    assert feeds["broken.xml"]["last_status"] == "permanent" and "not a feed" in feeds["broken.xml"]["last_error"]
    assert feeds["gone.xml"]["last_http_status"] == 404 and feeds["gone.xml"]["error_count"] == 1


@pytest.mark.parametrize("args, message", [
    (("fetch", "--feed", "999", "--inline"), "no feed '999'"),
    (("feeds", "add", "file:///etc/passwd"), "must start with http:// or https://"),
    (("feeds", "add", "http://127.0.0.1:9/feed.xml"), "NEWSWORKER_ALLOWED_PRIVATE_HOSTS"),
    (("articles", "list", "--since", "yesterday"), "not an ISO-8601 date"),
    (("fetch",), "--feed ID_OR_URL"),
    (("feeds", "add"), "Missing argument 'url'"),               # a usage error: click's message, no traceback
    (("articles", "list", "--limit", "zero"), "Invalid value for '--limit'"),
])
def test_expected_errors_are_one_line_without_traceback(env, args, message):
    done = cli(env, *args, check=False)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_opml_import_export_roundtrip(env):
    root = Path(__file__).resolve().parents[1]
    out = cli(env, "feeds", "import-opml", str(root / "config" / "feeds.opml")).stdout
    again = cli(env, "feeds", "import-opml", str(root / "config" / "feeds.opml")).stdout
    assert "feeds added" in out and " 0 feeds added" in again
    exported = cli(env, "feeds", "export-opml").stdout
    from worker.opml import parse_opml
    assert parse_opml(exported.encode()) == parse_opml((root / "config" / "feeds.opml").read_bytes())
    listed = jsonl(cli(env, "feeds", "list", "--json").stdout)
    cli(env, "feeds", "remove", str(listed[0]["id"]))
    assert len(jsonl(cli(env, "feeds", "list", "--json").stdout)) == len(listed) - 1


def test_tag_command_reads_and_writes_json_lines(env):
    lines = "\n".join(json.dumps(x) for x in [
        {"id": "seed", "title": "Defence ministers meet", "text": SEED_TEXT.read_text()},
        {"id": "football", "title": "Champions start title defence", "text": "The defenders held firm in the league match."},
    ])
    rows = {r["id"]: r for r in jsonl(cli(env, "tag", "-", input=lines).stdout)}
    names = [t["name"] for t in rows["seed"]["tags"]]
    assert names[0] == "defence" and "defence.diplomacy" in names
    assert rows["seed"]["tags"][0]["evidence"]
    assert rows["football"]["tags"] == []


def test_demo_ingests_through_an_embedded_worker(tmp_path):
    """`make demo`: the sample site through a real worker on the SQLite broker."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSWORKER_")}
    env["NEWSWORKER_DEMO_DIR"] = str(tmp_path / "demo")
    done = subprocess.run([sys.executable, "-m", "worker.demo"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "articles new: 5" in done.stdout
    assert "defence stories found" in done.stdout
    # The seed story (under whichever of its three listings was stored first), with its evidence.
    assert "2 defence stories found" in done.stdout
    assert "hasanov-tufekci-meeting" in done.stdout or "az-tr-defence-talks" in done.stdout
    assert "Colonel General" in done.stdout and "defence.diplomacy" in done.stdout
    assert "Champions start title defence" not in done.stdout


def test_entities_stored_and_queryable_then_retag_after_rules_change(env, devserver, tmp_path):
    for url in mount_site(devserver):
        cli(env, "feeds", "add", url)
    cli(env, "fetch", "--all", "--inline")

    (seed,) = [a for a in jsonl(cli(env, "articles", "list", "--country", "AZ", "--json").stdout)
               if "Zakir Hasanov" in a["text"]]
    assert {"AZ", "TR"} <= {c["code"] for c in seed["countries"]}
    hasanov = next(o for o in seed["officials"] if o["name"] == "Zakir Hasanov")
    assert (hasanov["role"], hasanov["rank"], hasanov["code"]) == ("Defence Minister", "Colonel General", "AZ")
    assert any(o["name"] == "Ministry of Defence" for o in seed["organisations"])
    tag = next(t for t in seed["tags"] if t["name"] == "defence")
    assert tag["details"] and tag["tagger_version"].startswith("rules-")
    assert not jsonl(cli(env, "articles", "list", "--country", "FR", "--json").stdout)
    # The consumers' view of defence stories (docs/schema.md) carries the same evidence.
    with sqlite3.connect(tmp_path / "newsworker.db") as db:
        view = {row[0]: row for row in db.execute(
            "select article_id, story_id, score, evidence, tagger_version from defence_articles_view")}
    assert view[seed["id"]][1] == seed["story_id"] and json.loads(view[seed["id"]][3]) == tag["evidence"]
    tagged = {a["id"] for a in jsonl(cli(env, "articles", "list", "--tag", "defence", "--limit", "1000", "--json").stdout)}
    assert set(view) == tagged

    # An operator demands so much evidence that nothing passes, then re-tags.
    rules = Path(__file__).resolve().parents[1] / "config" / "tagging.yaml"
    strict = tmp_path / "strict.yaml"
    strict.write_text(rules.read_text().replace("  min_positive: 1.5 ", "  min_positive: 1000 ", 1))
    assert strict.read_text() != rules.read_text()
    strict_env = {**env, "NEWSWORKER_TAGGING_RULES": str(strict)}
    out = cli(strict_env, "retag").stdout
    assert "re-tagged 5 articles" in out
    assert not jsonl(cli(strict_env, "articles", "list", "--tag", "defence", "--json").stdout)
    seed_again = next(a for a in jsonl(cli(env, "articles", "list", "--json").stdout) if a["id"] == seed["id"])
    assert seed_again["officials"]        # entities are rebuilt, not lost

    cli(env, "retag", "--since", "2024-01-01")
    back = jsonl(cli(env, "articles", "list", "--tag", "defence", "--json").stdout)
    assert seed["id"] in {a["id"] for a in back}
    assert {t["tagger_version"] for a in back for t in a["tags"]} == {tag["tagger_version"]}


def test_feeds_add_finds_the_feed_behind_a_web_page(env, devserver):
    devserver.add("/news/", b'<html><head><link rel="alternate" type="application/rss+xml" title="Comments" '
                  b'href="/comments/feed.xml"><link rel="alternate" type="application/rss+xml" title="News" '
                  b'href="feed.xml"></head><body>front page</body></html>')
    devserver.add("/news/feed.xml", b'<?xml version="1.0"?><rss version="2.0"><channel><title>News</title>'
                  b"</channel></rss>", content_type="application/rss+xml")
    devserver.add("/comments/feed.xml", b'<?xml version="1.0"?><rss version="2.0"><channel><title>C</title>'
                  b"</channel></rss>", content_type="application/rss+xml")
    out = cli(env, "feeds", "add", f"{devserver.base_url}/news/").stdout
    assert f"found feed {devserver.base_url}/news/feed.xml" in out
    assert [f["url"] for f in jsonl(cli(env, "feeds", "list", "--json").stdout)] == [f"{devserver.base_url}/news/feed.xml"]


def test_a_reader_that_stops_early_gets_no_traceback(env, tmp_path):
    """`newsworker tag big.jsonl | head -1`: the closed pipe ends the command quietly
    (click's convention: exit status 1, nothing on stderr)."""
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"id": i, "title": "Defence ministers meet", "text": "The army held exercises. " * 20})
                           + "\n" for i in range(3000)))
    proc = subprocess.Popen([sys.executable, "-m", "worker", "tag", str(big)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()                 # the reader is gone; the writer still has pages to write
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1, stderr
    assert json.loads(first)["id"] == 0
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
