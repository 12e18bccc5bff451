"""Full-text search over article titles and texts, ranked, on both databases.

Users type web-search syntax: words (all must match), ``"a phrase"``, ``or`` between two
alternatives and ``-word`` to exclude.  PostgreSQL parses it itself (``websearch_to_tsquery``)
against the stored ``articles.search_vector`` (GIN index, migration 0007); SQLite gets the same
syntax translated into an FTS5 query over ``articles_fts``, every word quoted so no input can
reach FTS5's own operators.  Both give a *score*, higher is better.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from .errors import InvalidQuery
from .models import Article

# Text search configurations the PostgreSQL index was built with (migration 0007): a query is
# parsed with each, so a word matches whatever language its article was stemmed in.
PG_CONFIGS = ("simple", "english", "russian", "turkish", "french", "german", "spanish", "italian",
              "portuguese", "dutch", "arabic")
# Matches ranked by relevance: the newest this many of a search (with its filters); older
# matches follow them, newest first.  Ranking reads every ranked article's index entry
# (the tsvector, up to 100k characters of text): "minister" over 100,000 articles matched
# 4,915 and took 70 ms to rank in full, and news readers want the recent ones anyway.
RANK_WINDOW = 1000

# FTS5 bm25 column weights (title, text): a title hit counts as much as ten in the body.
_BM25_WEIGHTS = (10.0, 1.0)
_TOKEN = re.compile(r'(-?)"([^"]*)"?|(\S+)')
_WORD = re.compile(r"\w", re.UNICODE)


@dataclass(frozen=True)
class Search:
    """A search's WHERE clause, score column and FROM additions, for one dialect."""

    condition: Any
    score: Any
    join: Any = None          # (table, on-clause) to join, SQLite's FTS table


def search(session: Any, query: str) -> Search:
    """The WHERE clause and score of a search for *query* on *session*'s database."""
    query = (query or "").strip()
    if not _WORD.search(query):
        raise InvalidQuery(f"search {query!r} has no word to look for")
    match = fts5_query(query)       # also refuses a query that only excludes, on both databases
    if session.get_bind().dialect.name == "postgresql":
        return _pg_search(session, query)
    return _fts5_search(match)


_PG_TSQUERY = sa.text("""
    SELECT string_agg(DISTINCT '(' || q || ')', ' | ')
    FROM (SELECT websearch_to_tsquery(cfg::regconfig, :q)::text AS q FROM unnest(CAST(:cfgs AS text[])) AS cfg) parsed
    WHERE q <> ''
""")


def _pg_search(session: Any, query: str) -> Search:
    # Parsed once per configuration, then the distinct forms ORed: a query repeating the same
    # lexeme eleven times misleads the planner into a sequential scan (measured: 1.3 s vs 16 ms).
    tsquery = session.connection().execute(_PG_TSQUERY, {"q": query, "cfgs": list(PG_CONFIGS)}).scalar()
    if not tsquery:
        raise InvalidQuery(f"search {query!r} has no word to look for")
    vector = sa.literal_column("articles.search_vector")
    tsq = sa.cast(sa.bindparam("tsq", tsquery, type_=sa.Text), postgresql.TSQUERY)
    # ts_rank (term frequency, title weighted A above text's B, divided by 1 + log(length)):
    # a third of ts_rank_cd's cost on thousands of matches.
    return Search(condition=vector.op("@@")(tsq), score=sa.func.ts_rank(vector, tsq, 1).cast(sa.Float))


_FTS = sa.table("articles_fts", sa.column("rowid"))
_CTID = sa.literal_column("articles.ctid")


def _fts5_search(match: str) -> Search:
    fts = sa.literal_column("articles_fts")
    return Search(condition=fts.op("MATCH")(match), score=-sa.func.bm25(fts, *_BM25_WEIGHTS),
                  join=(_FTS, _FTS.c.rowid == Article.id))


def ranked_keys(session: Any, found: Search, filters: list[Any], after: Optional[dict[str, Any]],
                limit: int) -> tuple[list[tuple[int, float]], int]:
    """One page of (article id, score), best first, ties newest first, and the smallest id
    ranked by relevance: that of the RANK_WINDOW-th newest match (0 when there are
    fewer), kept in the cursor (*after*: ``score``, ``id``, ``from``) so one walk ranks one
    set.  One statement: the matches are found once; only the window's are ranked (their
    index entries read), the older ones follow with score 0."""
    pg = session.get_bind().dialect.name == "postgresql"
    # PostgreSQL: each match's row address too, so ranking reads the window's rows straight
    # from the heap (a TID scan) instead of through the primary key (1 buffer, not 3; one
    # statement, one snapshot: the address found is the row version ranked).
    matches = sa.select(Article.id.label("id"), *([_CTID.label("tid")] if pg else [])).where(*filters, found.condition)
    if found.join is not None:
        matches = matches.join(*found.join)
    matches = matches.cte("matches")
    if pg:
        # From the GIN index, all at once: left to itself the planner may walk the id index
        # backwards testing each article's tsvector (66 ms for "minister" instead of 5).
        matches = matches.prefix_with("MATERIALIZED")
    if after is None:
        newest = sa.select(matches.c.id).order_by(matches.c.id.desc()).limit(RANK_WINDOW).subquery()
        window = sa.select(sa.case((sa.func.count() >= RANK_WINDOW, sa.func.min(newest.c.id)), else_=0)
                           .label("start")).cte("window")
    else:
        window = sa.select(sa.literal(after.get("from", 0), sa.Integer).label("start")).cte("window")
    start = sa.select(window.c.start).scalar_subquery()
    in_window = sa.select(matches.c.tid if pg else matches.c.id).where(matches.c.id >= start)
    ranked = sa.select(Article.id.label("id"), found.score.label("score")).where(
        _CTID == sa.func.any(sa.func.array(in_window.scalar_subquery())) if pg else Article.id.in_(in_window))
    if found.join is not None:      # FTS5's bm25() is only defined beside its MATCH
        ranked = ranked.join(*found.join).where(found.condition)
    older = sa.select(matches.c.id.label("id"), sa.literal(0.0, sa.Float).label("score")).where(matches.c.id < start)
    page = sa.union_all(ranked, older).subquery("page")
    query = sa.select(page.c.id, page.c.score, start.label("start"))
    if after:
        query = query.where(sa.or_(page.c.score < after["score"],
                                   sa.and_(page.c.score == after["score"], page.c.id < after["id"])))
    rows = session.connection().execute(query.order_by(page.c.score.desc(), page.c.id.desc()).limit(limit + 1)).all()
    first = rows[0].start if rows else (after or {}).get("from", 0)
    return [(r.id, r.score) for r in rows], first


def fts5_query(query: str) -> str:
    """Web-search syntax as an FTS5 expression: each word or phrase quoted (FTS5 tokenises
    inside the quotes), implicit AND, ``or`` → OR, ``-x`` → NOT x."""
    parts: list[str] = []
    negated: list[str] = []
    pending_or = False
    for m in _TOKEN.finditer(query):
        minus, phrase, word = m.group(1), m.group(2), m.group(3)
        if word is not None and word.lower() == "or":
            pending_or = bool(parts)
            continue
        if word is not None and word.startswith("-") and len(word) > 1:
            minus, word = "-", word[1:]
        text = phrase if phrase is not None else word
        if not _WORD.search(text or ""):
            continue
        quoted = '"' + text.replace('"', '""') + '"'
        if minus:
            negated.append(quoted)
        else:
            if parts:
                parts.append("OR" if pending_or else "AND")
            parts.append(quoted)
        pending_or = False
    if not parts:
        raise InvalidQuery(f"search {query!r} only excludes words; say what to look for too")
    return " ".join(parts) + "".join(f" NOT {n}" for n in negated)
