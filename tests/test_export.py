"""`newsworker export`: every stored article, by ascending id, as JSON Lines or CSV, on
the embedded SQLite default and on PostgreSQL, after a real inline ingest of the sample site."""

from __future__ import annotations

import csv
import io
import json

import pytest

from tests.support.proc import add_sample_site, base_env, cli, jsonl
from worker.db import session_scope
from worker.store import iter_articles


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def env(request, tmp_path, devserver):
    """The sample site (five articles, two of them defence stories) ingested --inline."""
    settings = {"allowed_private_hosts": devserver.host_port}
    if request.param == "postgresql":
        settings["database_url"] = request.getfixturevalue("own_db")
    env = base_env(tmp_path, **settings)
    assert "articles new: 5, failures: 0" in add_sample_site(env, devserver)
    return env


def test_export(env, tmp_path):
    """One ingest per database (it takes most of the time), then every check on it."""
    check_jsonl_is_articles_list_by_ascending_id(env, tmp_path)
    check_csv_parses_back_to_the_json_rows(env, tmp_path)
    check_filters_and_batches(env)
    check_bad_options_are_one_error_line(env, tmp_path)


def database_url(env: dict[str, str]) -> str:
    return env.get("NEWSWORKER_DATABASE_URL") or f"sqlite:///{env['NEWSWORKER_VAR_DIR']}/newsworker.db"


def listed_lines(env: dict[str, str], *args: str) -> list[str]:
    """`articles list --json` output lines, by ascending id (the export's order)."""
    lines = cli(env, "articles", "list", "--json", "--limit", "1000", *args).stdout.splitlines()
    return sorted(lines, key=lambda line: json.loads(line)["id"])


def check_jsonl_is_articles_list_by_ascending_id(env, tmp_path):
    listed = listed_lines(env)
    done = cli(env, "export", "--format", "jsonl")
    assert done.stdout.splitlines() == listed            # the same rows, byte for byte (ensure_ascii=False)
    ids = [r["id"] for r in jsonl(done.stdout)]
    assert len(ids) == 5 and ids == sorted(ids)
    assert any(ord(c) > 127 for c in done.stdout)         # the seed story's names stay UTF-8, not \u escapes
    assert done.stderr.strip() == "exported 5 articles to standard output"

    path = tmp_path / "out.jsonl"
    to_file = cli(env, "export", "--format", "jsonl", "--output", str(path))
    assert to_file.stdout == ""
    assert to_file.stderr.strip() == f"exported 5 articles to {path}"
    assert path.read_text(encoding="utf-8") == done.stdout


def check_csv_parses_back_to_the_json_rows(env, tmp_path):
    rows = [json.loads(line) for line in listed_lines(env)]
    path = tmp_path / "out.csv"
    done = cli(env, "export", "--format", "csv", "--output", str(path))
    assert done.stdout == "" and done.stderr.strip() == f"exported 5 articles to {path}"
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        header, parsed = reader.fieldnames, list(reader)
    assert header == list(rows[0])
    assert [(int(r["id"]), r["title"], r["url"]) for r in parsed] == [(r["id"], r["title"], r["url"]) for r in rows]
    assert [json.loads(r["tags"]) for r in parsed] == [r["tags"] for r in rows]
    assert [json.loads(r["officials"]) for r in parsed] == [r["officials"] for r in rows]
    # Texts span several lines: quoting keeps each one in its own cell.
    assert any("\n" in r["text"] for r in rows)
    assert [r["text"] for r in parsed] == [r["text"] for r in rows]
    assert {r["feed_url"] for r in parsed} == {r["feed_url"] for r in rows}


def check_filters_and_batches(env):
    defence = listed_lines(env, "--tag", "defence")
    tagged = cli(env, "export", "--format", "jsonl", "--tag", "defence").stdout.splitlines()
    assert tagged == defence and len(tagged) == 2
    assert all("defence" in {t["name"] for t in json.loads(line)["tags"]} for line in tagged)

    future = cli(env, "export", "--format", "jsonl", "--since", "2030-01-01")
    assert future.stdout == "" and future.stderr.strip() == "exported 0 articles to standard output"
    empty_csv = cli(env, "export", "--format", "csv", "--since", "2030-01-01T00:00").stdout
    assert list(csv.reader(io.StringIO(empty_csv))) == [list(json.loads(defence[0]))]     # the header alone

    # Pages of two: the keyset pagination crosses page boundaries and loses or repeats nothing.
    everything = jsonl(cli(env, "export", "--format", "jsonl").stdout)
    with session_scope(database_url(env)) as s:
        assert list(iter_articles(s, batch=2)) == everything
        assert [a["id"] for a in iter_articles(s, tag="defence", batch=1)] == [json.loads(x)["id"] for x in defence]


BAD_OPTIONS = [
    (("--format", "xml"), "--format 'xml' is not one of: jsonl, csv"),
    ((), "say which format"),
    (("--format", "csv", "--since", "yesterday"), "--since 'yesterday' is not an ISO-8601 date"),
]


def check_bad_options_are_one_error_line(env, tmp_path):
    path = tmp_path / "kept.csv"
    path.write_text("an earlier export\n")
    for args, message in BAD_OPTIONS:
        done = cli(env, "export", *args, "--output", str(path), check=False)
        assert done.returncode != 0, args
        assert done.stdout == ""
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
        assert path.read_text() == "an earlier export\n"      # refused before the file was opened
