"""NEWSWORKER_LOG_FORMAT=json: a real worker's whole output is JSON lines, and the lines
about a feed poll or an article carry the feed and article ids."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from tests.support.proc import WorkerProcess, add_sample_site, base_env, cli

pytestmark = pytest.mark.services


def test_worker_writes_json_lines_with_feed_and_article_ids(tmp_path, devserver, own_db, redis_url):
    env = base_env(tmp_path, database_url=own_db, broker_url=redis_url, result_backend=redis_url,
                   allowed_private_hosts=devserver.host_port, log_format="json")
    add_sample_site(env, devserver, inline_fetch=False)
    missing = devserver.base_url + "/feeds/gone.rss"          # answers 404: a failed poll, logged as a warning
    cli(env, "feeds", "add", missing, "--no-discover")

    worker = WorkerProcess(env, "--concurrency", "1", log=tmp_path / "worker.log")
    try:
        worker.wait_ready()
        out = cli(env, "fetch", "--all", "--wait", "--timeout", "300").stdout
        assert "articles new: 5" in out, out
    finally:
        worker.stop()

    lines = [line for line in worker.log().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
    for r in records:
        assert {"timestamp", "level", "logger", "message"} <= set(r), r
    assert any(r["message"].endswith(" ready.") for r in records)

    # Each new entry: one line naming the article task, the feed, the entry's URL and the
    # article it became; the task's own success line names its feed.
    entries = [r for r in records if r["logger"] == "worker.tasks" and " stored as article " in r["message"]]
    engine = sa.create_engine(own_db)
    with engine.connect() as db:
        new_entries = db.execute(sa.text("SELECT sum(items_new) FROM fetch_events")).scalar_one()
    engine.dispose()
    assert len(entries) == new_entries >= 5, [r["message"] for r in records]
    for r in entries:
        assert r["task_name"] == "worker.tasks.process_entries"
        assert isinstance(r["feed_id"], int) and isinstance(r["article_id"], int)
        assert r["url"].startswith(devserver.base_url) and r["message"].startswith(r["url"])
        assert r["message"].split(" article ")[1].split()[0] == str(r["article_id"])
    batches = [r for r in records if r["logger"] == "celery.app.trace" and "process_entries" in r["message"]
               and "succeeded" in r["message"]]
    assert batches and all(r["task_id"] in r["message"] and isinstance(r["feed_id"], int) for r in batches)
    assert {r["task_id"] for r in entries} <= {r["task_id"] for r in batches}
    assert any(r["url"].endswith("/news/removed-story.html") for r in entries)
    assert len({r["article_id"] for r in entries}) == 5

    # Polls: the success lines carry the feed id, and the failed poll's warning names its feed and URL.
    polls = [r for r in records if r["logger"] == "celery.app.trace" and "poll_feed" in r["message"]
             and "succeeded" in r["message"]]
    assert polls and all("feed_id" in r or "feed_ids" in r for r in polls)
    failed = [r for r in records if r["level"] == "WARNING" and "404" in r["message"] and r.get("url") == missing]
    assert failed, [r for r in records if r["level"] == "WARNING"]
    assert all(isinstance(r["feed_id"], int) for r in failed)
