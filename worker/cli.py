"""The ``newsworker`` command line.  Command names are a stable interface."""

from __future__ import annotations

import csv
import gc
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Optional, TextIO

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlmodel import select

from .errors import ConfigError, NewsworkerError

app = typer.Typer(help="newsworker: news feed ingestion.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
feeds_app = typer.Typer(help="The feeds to poll.", no_args_is_help=True)
articles_app = typer.Typer(help="Stored articles.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(feeds_app, name="feeds")
app.add_typer(articles_app, name="articles")

out = Console()
err = Console(stderr=True)


def _parse_since(value: Optional[str], option: str = "--since") -> Optional[datetime]:
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{option} {value!r} is not an ISO-8601 date or time (e.g. 2024-01-17 or 2024-01-17T12:00)") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


# ---------------------------------------------------------------- db

@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Create or migrate the database schema to REVISION (default: the latest)."""
    from .migrate import upgrade
    from .settings import get_settings

    upgrade(revision=revision)
    out.print(f"database at revision {revision}: {get_settings().database_url}")


# ---------------------------------------------------------------- feeds

@feeds_app.command("add")
def feeds_add(
    url: str,
    name: Optional[str] = typer.Option(None, "--name", help="A display name."),
    interval: Optional[int] = typer.Option(None, "--interval", min=1, help="Seconds between polls (default: learned)."),
    discover: bool = typer.Option(True, "--discover/--no-discover",
                                  help="Given a web page, find its feed (<link rel=alternate>)."),
) -> None:
    """Add a feed (RSS, Atom, JSON Feed or news sitemap), or the feed a web page points to."""
    from .db import session_scope
    from .discover import resolve_feed_url
    from .errors import BlockedURL, FetchError, TemporaryFetchError
    from .http import check_url, make_client
    from .settings import get_settings
    from .store import add_feed

    settings = get_settings()
    if not url.startswith(("http://", "https://")):
        raise BlockedURL(url, "a feed URL must start with http:// or https://")
    check_url(url, settings.allowed_private_hosts)
    if discover:
        try:
            with make_client(settings) as client:
                found = resolve_feed_url(client, url, settings)
        except TemporaryFetchError as exc:       # down for now: the poll will record what happens
            err.print(f"warning: could not check {url} ({exc.reason}); added as given", markup=False)
            found = url
        except FetchError as exc:
            raise type(exc)(exc.url, f"{exc.reason} (to add the URL anyway: --no-discover)") from None
        if found != url:
            out.print(f"found feed {found} at {url}")
            url = found
            check_url(url, settings.allowed_private_hosts)
    with session_scope() as s:
        feed, created = add_feed(s, url, name=name, interval=interval)
    out.print(f"{'added' if created else 'already present'}: feed {feed.id} {feed.url}")


@feeds_app.command("list")
def feeds_list(as_json: bool = typer.Option(False, "--json", help="JSON Lines, one feed per line.")) -> None:
    """Feeds and their health."""
    from .db import session_scope
    from .models import Feed
    from .store import feed_dict

    with session_scope() as s:
        feeds = s.exec(select(Feed).order_by(Feed.id)).all()
    rows = [feed_dict(f) for f in feeds]
    if as_json:
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))
        return
    table = Table("id", "url", "name", "status", "failures", "every", "last success", "next fetch", "last error")
    for r in rows:
        status = r["last_status"] or "never polled"
        if not r["enabled"]:
            status = "[red]disabled[/]"
        every = r["interval_seconds"] or r["fetch_interval"]
        table.add_row(str(r["id"]), r["url"], r["name"] or r["title"] or "", status, str(r["error_count"]),
                      f"{every // 60} min" if every else "", (r["last_success_at"] or "")[:19],
                      (r["next_fetch_at"] or "")[:19] if r["enabled"] else "",
                      (r["disabled_reason"] or r["last_error"] or "")[:80])
    out.print(table)


@feeds_app.command("enable")
def feeds_enable(feed: str = typer.Argument(..., help="Feed id or URL.")) -> None:
    """Poll a disabled feed again (its failure counts are reset; it is due now)."""
    from .db import session_scope
    from .store import enable_feed

    with session_scope() as s:
        f = enable_feed(s, feed)
        fid, furl = f.id, f.url
    out.print(f"enabled feed {fid} {furl}")


@feeds_app.command("remove")
def feeds_remove(feed: str = typer.Argument(..., help="Feed id or URL.")) -> None:
    """Stop polling a feed.  Its articles stay."""
    from .db import session_scope
    from .store import get_feed

    with session_scope() as s:
        f = get_feed(s, feed)
        fid, furl = f.id, f.url
        s.delete(f)
    out.print(f"removed feed {fid} {furl}")


@feeds_app.command("import-opml")
def feeds_import_opml(path: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True)) -> None:
    """Add every feed in an OPML file (folders become groups); known feeds are left as they are."""
    from .db import session_scope
    from .opml import parse_opml
    from .store import add_feed

    feeds = parse_opml(path.read_bytes(), str(path))
    added = 0
    with session_scope() as s:
        for f in feeds:
            _, created = add_feed(s, f.url, name=f.name, group=f.group, site_url=f.site_url)
            added += created
    out.print(f"imported {path}: {added} feeds added, {len(feeds) - added} already present")


@feeds_app.command("export-opml")
def feeds_export_opml() -> None:
    """Print all feeds as OPML."""
    from .db import session_scope
    from .models import Feed
    from .opml import OPMLFeed, build_opml

    with session_scope() as s:
        feeds = [OPMLFeed(f.url, f.name or f.title, f.site_url, f.group_name)
                 for f in s.exec(select(Feed).order_by(Feed.id)).all()]
    sys.stdout.write(build_opml(feeds).decode("utf-8") + "\n")


# ---------------------------------------------------------------- fetch

@app.command("fetch")
def fetch(
    feed: list[str] = typer.Option([], "--feed", help="Feed id or URL; repeat for several."),
    all_feeds: bool = typer.Option(False, "--all", help="Every enabled feed."),
    inline: bool = typer.Option(False, "--inline", help="Run here, without broker or worker."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the worker and print the outcome."),
    timeout: float = typer.Option(1800, "--timeout", help="With --wait: seconds to wait at most."),
) -> None:
    """Poll feeds now: through the broker for a running worker, or --inline in this process."""
    from . import runner

    if not feed and not all_feeds:
        raise ConfigError("say which feeds: --feed ID_OR_URL (repeatable) or --all")
    feed_ids, busy = runner.claim(feed, all_feeds)
    for fid, since in busy:
        err.print(f"feed {fid} is already queued or being polled (since {since:%Y-%m-%d %H:%M:%S}); not queued again")
    if not feed_ids:
        return
    if inline:
        summary = _fetch_inline(feed_ids)
        out.print(summary.line())
        raise typer.Exit(1 if summary.failures and summary.failures == summary.feeds else 0)
    tasks = runner.enqueue(feed_ids)
    for fid, task_id in tasks:
        out.print(f"feed {fid}: queued poll task {task_id}")
    if wait:
        summary = runner.wait(tasks, timeout)
        for line in summary.details:
            out.print(line)
        out.print(summary.line())


def _fetch_inline(feed_ids: list[int]) -> Any:
    from . import runner

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=False) as progress:
        bar = progress.add_task("polling feeds", total=len(feed_ids))

        def on_event(kind: str, detail: str, total: int = 0) -> None:
            if kind == "entries":
                progress.update(bar, total=(progress.tasks[0].total or 0) + total, description=detail)
            else:
                progress.update(bar, advance=1, description=detail)

        return runner.run_inline(feed_ids, on_event)


# ---------------------------------------------------------------- articles

@articles_app.command("list")
def articles_list(
    tag: Optional[str] = typer.Option(None, "--tag", help="Only articles with this tag, e.g. defence."),
    since: Optional[str] = typer.Option(None, "--since", help="Published (or stored) at or after, ISO-8601."),
    country: Optional[str] = typer.Option(None, "--country", help="Only stories about this country (ISO code, e.g. AZ)."),
    limit: int = typer.Option(50, "--limit", min=1),
    stories: bool = typer.Option(False, "--stories", help="One row per story, with every outlet that ran it."),
    as_json: bool = typer.Option(False, "--json", help="JSON Lines, one article (or story) per line."),
) -> None:
    """Stored articles, newest first, with tags (score, evidence) and entities."""
    from .db import session_scope
    from .store import list_articles, list_stories

    with session_scope() as s:
        if stories:
            rows = list_stories(s, tag=tag, since=_parse_since(since), limit=limit, country=country)
        else:
            rows = list_articles(s, tag=tag, since=_parse_since(since), limit=limit, country=country)
    if stories and not as_json:
        table = Table("story", "published", "title", "outlets", "copies")
        for r in rows:
            table.add_row(str(r["story_id"]), (r["published_at"] or "")[:10], (r["title"] or "")[:70],
                          ", ".join(r["outlets"]), str(len(r["articles"])))
        out.print(table)
        return
    _print_articles(rows, as_json)


@articles_app.command("search")
def articles_search(
    query: str = typer.Argument(..., help='Words to find (all of them), "a phrase", a or b, -excluded.'),
    tag: Optional[str] = typer.Option(None, "--tag", help="Only articles with this tag, e.g. defence."),
    country: Optional[str] = typer.Option(None, "--country", help="Only stories about this country (ISO code, e.g. AZ)."),
    language: Optional[str] = typer.Option(None, "--language", help="Only articles in this language (ISO 639-1)."),
    since: Optional[str] = typer.Option(None, "--since", help="Published (or stored) at or after, ISO-8601."),
    until: Optional[str] = typer.Option(None, "--until", help="Published (or stored) before, ISO-8601."),
    limit: int = typer.Option(20, "--limit", min=1, max=1000),
    as_json: bool = typer.Option(False, "--json", help="JSON Lines, one article per line, with its score."),
) -> None:
    """Full-text search over titles and texts, best match first."""
    from .db import session_scope
    from .store import query_articles

    with session_scope() as s:
        rows, _ = query_articles(s, q=query, limit=limit, tag=tag, country=country, language=language,
                                 since=_parse_since(since), until=_parse_since(until, "--until"))
    if not rows:
        err.print(f"no article matches {query!r}")
    _print_articles(rows, as_json, score=True)


def _print_articles(rows: list[dict[str, Any]], as_json: bool, score: bool = False) -> None:
    if as_json:
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))
        return
    table = Table("id", *(["score"] if score else []), "published", "title", "lang", "tags", "url")
    for r in rows:
        tags = ", ".join(f"{t['name']} {t['score']:.2f}" for t in r["tags"])
        table.add_row(str(r["id"]), *([f"{r['score']:.3f}"] if score else []), (r["published_at"] or "")[:10],
                      (r["title"] or "")[:70], r["language"] or "", tags, r["url"])
    out.print(table)


# ---------------------------------------------------------------- export

EXPORT_FORMATS = ("jsonl", "csv")


@app.command("export")
def export(
    fmt: Optional[str] = typer.Option(None, "--format", help="jsonl (rows as `articles list --json`) or csv."),
    tag: Optional[str] = typer.Option(None, "--tag", help="Only articles with this tag, e.g. defence."),
    since: Optional[str] = typer.Option(None, "--since", help="Published (or stored) at or after, ISO-8601."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write to this file (default: standard output)."),
) -> None:
    """Every matching article, by ascending id, for bulk consumers: streamed in batches, no limit."""
    from .db import session_scope
    from .store import iter_articles

    # Checked here rather than by click, so a wrong or missing format is one error line like the others.
    if not fmt:
        raise ConfigError("say which format: --format jsonl or --format csv")
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format {fmt!r} is not one of: {', '.join(EXPORT_FORMATS)}")
    when = _parse_since(since)          # before opening --output: a bad option leaves the file alone
    stream = _open_output(output)
    try:
        with session_scope() as s:
            count = _write_export(stream, fmt, iter_articles(s, tag=tag, since=when))
    finally:
        if output is not None:
            stream.close()
    err.print(f"exported {count} articles to {output or 'standard output'}", markup=False, highlight=False,
              soft_wrap=True)


def _open_output(path: Optional[Path]) -> TextIO:
    if path is None:
        return sys.stdout
    try:
        return open(path, "w", encoding="utf-8", newline="")   # newline="": csv writes its own line ends
    except OSError as exc:
        raise ConfigError(f"--output {str(path)!r}: cannot write there ({exc.strerror})") from None


def _write_export(stream: TextIO, fmt: str, rows: Iterable[dict[str, Any]]) -> int:
    """Write *rows* as JSON Lines or CSV; returns how many."""
    if fmt == "csv":
        return _write_csv(stream, rows)
    count = 0
    for count, r in enumerate(rows, 1):
        stream.write(json.dumps(r, ensure_ascii=False) + "\n")
    return count


def _write_csv(stream: TextIO, rows: Iterable[dict[str, Any]]) -> int:
    from .store import article_columns

    writer = csv.DictWriter(stream, fieldnames=article_columns())
    writer.writeheader()
    count = 0
    for count, r in enumerate(rows, 1):
        # Nested values (tags, entities) as JSON text: one cell, decodable by any consumer.
        writer.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v
                         for k, v in r.items()})
    return count


# ---------------------------------------------------------------- change feed

@app.command("changes")
def changes(
    cursor: Optional[str] = typer.Option(None, "--cursor", help="Resume after this cursor (from the last run's final line)."),
    limit: int = typer.Option(1000, "--limit", min=1, help="Changes per batch."),
    follow: bool = typer.Option(False, "--follow", help="Keep reading as changes arrive (a cursor line after each batch)."),
    articles: bool = typer.Option(False, "--articles", help="Include each article as it is now (as `articles list --json`)."),
) -> None:
    """Articles stored, re-extracted or re-tagged since --cursor, oldest first, as JSON
    Lines; the last line is {"cursor": …} to pass next time (docs/changes.md)."""
    from .changes import stream

    stream(cursor, limit, follow, articles, lambda line: print(line, flush=True))


# ---------------------------------------------------------------- tagging

@app.command("tag")
def tag(path: str = typer.Argument("-", help="JSON Lines file of {id, title, text}; - for standard input.")) -> None:
    """Tag stories with the pipeline's tagger: prints {id, tags} per line."""
    from .entities import extract_entities
    from .extract import detect_language
    from .store import entities_by_kind
    from .tagging import load_tagger

    tagger = load_tagger()
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")
    with stream:
        for n, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}: line {n} is not JSON: {exc}") from None
            title, text = item.get("title") or "", item.get("text") or ""
            language = item.get("language") or detect_language(f"{title}\n{text}")
            tags = tagger.tag(title, text, language)
            print(json.dumps({"id": item.get("id"), "language": language,
                              "tags": [tag_dict(t, tagger.version) for t in tags],
                              **entities_by_kind(extract_entities(title, text, language))}, ensure_ascii=False))


def tag_dict(t: Any, version: str) -> dict[str, Any]:
    return {"name": t.name, "score": t.score, "evidence": list(t.evidence), "iptc_code": t.iptc_code,
            "tagger_version": version, "details": t.details}


@app.command("retag")
def retag(since: Optional[str] = typer.Option(None, "--since", help="Only articles published (or stored) since, ISO-8601.")) -> None:
    """Re-tag stored articles after the rules changed; records the new tagger version."""
    from . import runner

    with Progress(TextColumn("re-tagging"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err) as progress:
        bar = progress.add_task("retag", total=None)
        count, version = runner.retag(_parse_since(since), lambda done, total: progress.update(bar, completed=done, total=total))
    out.print(f"re-tagged {count} articles with tagger {version}")


@app.command("reextract")
def reextract(since: Optional[str] = typer.Option(None, "--since", help="Only articles published (or stored) since, ISO-8601.")) -> None:
    """Rebuild text and metadata from the kept page and feed bytes (after an extractor
    upgrade or a fix), without fetching again; tags and entities follow."""
    from . import runner

    with Progress(TextColumn("re-extracting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err) as progress:
        bar = progress.add_task("reextract", total=None)
        rebuilt, missing = runner.reextract(_parse_since(since),
                                            lambda done, total: progress.update(bar, completed=done, total=total))
    out.print(f"re-extracted {rebuilt} articles" + (f"; {missing} had no kept page or feed body "
                                                    "(older than the retention period)" if missing else ""))


# ---------------------------------------------------------------- celery

@app.command("worker")
def worker(
    concurrency: Optional[int] = typer.Option(None, "--concurrency", "-c", help="Worker processes (default: CPUs)."),
    beat: bool = typer.Option(False, "--beat", "-B", help="Also run beat in this worker (run exactly one beat)."),
    queues: str = typer.Option("feeds,articles", "--queues", "-Q", help="Queues to consume."),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l"),
) -> None:
    """Start a Celery worker with newsworker's app and settings."""
    from .metrics import worker_environment
    from .settings import get_settings

    # Before anything imports prometheus_client and before the pool forks: every pool
    # process writes its task metrics to NEWSWORKER_METRICS_DIR (docs/operations.md).
    worker_environment(get_settings())
    from .celery_app import app as celery

    json_logs = get_settings().log_format == "json"
    if json_logs:       # from the start: Celery warns (running as root, …) before it sets up logging
        from .logs import configure

        configure(loglevel.upper())
    # JSON logs: no startup banner (-q), it is not a log record.
    argv = (["-q"] if json_logs else []) + ["worker", f"--loglevel={loglevel}", f"--queues={queues}"]
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    if beat:
        argv.append("--beat")
    celery.worker_main(argv)


@app.command("beat")
def beat(loglevel: str = typer.Option("INFO", "--loglevel", "-l")) -> None:
    """Start Celery beat (run exactly one per deployment)."""
    from .celery_app import app as celery
    from .settings import get_settings

    json_logs = get_settings().log_format == "json"     # as the worker: no banner, it is not a log record
    celery.start((["-q"] if json_logs else []) + ["beat", f"--loglevel={loglevel}"])


@app.command("api")
def api(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    workers: int = typer.Option(1, "--workers", min=1, help="Server processes (the handlers are CPU-bound "
                                                            "Python: one per core)."),
) -> None:
    """Serve the read-only HTTP API and the operator page (see docs/api.md)."""
    import uvicorn

    from .api.nodelay import guard_listener_protocol
    from .logs import uvicorn_log_config

    guard_listener_protocol()               # --workers N: keep-alive requests without a 40 ms stall
    config = uvicorn_log_config()           # JSON lines when NEWSWORKER_LOG_FORMAT=json
    # By import string: each server process builds its own app (engines are per process).
    uvicorn.run("worker.api:create_app", factory=True, host=host, port=port, workers=workers,
                **({"log_config": config} if config else {}))


def main() -> None:
    try:
        _run()
    finally:
        # The process is about to exit: its objects go back to the OS with it, not through
        # the collector at shutdown (0.35 s of every command on a 2-core machine).
        gc.freeze()


def _run() -> None:
    try:
        rv = app(standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)
    except NewsworkerError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)   # one line, however long
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        err.print("aborted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors (typer >= 0.24 raises those of its own copy of click)
        if isinstance(exc, _click_exceptions()):
            exc.show()
            sys.exit(exc.exit_code)
        raise


def _click_exceptions() -> tuple[type, ...]:
    import click

    vendored = getattr(getattr(typer.core, "_click", None), "ClickException", None)
    return (click.ClickException,) + ((vendored,) if vendored else ())
