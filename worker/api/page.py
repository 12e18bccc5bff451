"""The operator page at `/`: feeds and their health with a "Fetch now" button, the latest
defence stories with their evidence and outlets, and stories per day.  Rendered here
(Jinja2, autoescaped: every stored string is someone else's input); one small inline
script for the button; no external assets.  A Content-Security-Policy with a per-response
nonce means a string that slipped through escaping still could not run."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any, Optional
from urllib.parse import urlsplit

import sqlalchemy as sa
from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse
from jinja2 import Environment
from markupsafe import Markup, escape
from sqlmodel import Session, select

from ..models import Feed
from .. import store
from . import chart
from .health import feed_rows, stories_per_day
from .routes import session

router = APIRouter()

MAX_FEEDS = 500          # the page shows this many, failing first; GET /feeds has them all
MAX_STORIES = 10


def _href(url: Optional[str]) -> Optional[str]:
    """A stored URL as a link target, only if http(s): `javascript:` stays text."""
    return url if url and urlsplit(url).scheme.lower() in ("http", "https") else None


def _when(value: Any) -> str:
    if not value:
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return f"{value:%Y-%m-%d %H:%M}"


def _when_cell(value: Any) -> Markup:
    """A time that may wrap between date and time, never inside the date."""
    text = _when(value)
    return Markup(" ".join(f'<span class="nw">{escape(part)}</span>' for part in text.split(" ")))


def _status(row: dict[str, Any]) -> tuple[str, str]:
    """(label, CSS class) of a feed's health."""
    if not row["enabled"]:
        return "disabled", "bad"
    if row["last_status"] is None:
        return "never polled", "idle"
    return row["last_status"], {"ok": "good", "not_modified": "good", "temporary": "warn"}.get(row["last_status"], "bad")


_env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
_env.filters.update(href=_href, when=_when, when_cell=_when_cell)
_env.globals.update(status=_status)

TEMPLATE = _env.from_string("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>newsworker — operator</title>
<link rel="icon" href="data:,">
<style nonce="{{ nonce }}">
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d2330; background: #f7f8fa; }
h1 { font-size: 1.4rem; margin: 0 0 .2rem; } h2 { font-size: 1.1rem; margin: 1.6rem 0 .5rem; }
.sub { color: #5b6475; margin: 0 0 1rem; }
section { background: #fff; border: 1px solid #dde1e8; border-radius: 6px; padding: .8rem 1rem; overflow-x: auto; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid #eceef2; vertical-align: top; }
th { font-weight: 600; color: #5b6475; font-size: .85rem; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } .nw { white-space: nowrap; }
.url { color: #5b6475; font-size: .8rem; word-break: break-all; }
.badge { display: inline-block; padding: 0 .45rem; border-radius: 9px; font-size: .8rem; }
.badge.good { background: #dff3e4; color: #17612d; } .badge.warn { background: #fff1cc; color: #7a5300; }
.badge.bad { background: #fbe0e0; color: #8a1c1c; } .badge.idle { background: #e9ecf2; color: #4a5262; }
.err { color: #8a1c1c; font-size: .85rem; min-width: 12rem; max-width: 20rem; overflow-wrap: anywhere; }
.outcome { display: block; font-size: .8rem; margin-top: .2rem; color: #4a5262; }
.outcome.ok { color: #17612d; } .outcome.warn { color: #7a5300; } .outcome.fail { color: #8a1c1c; }
button { font: inherit; padding: .15rem .6rem; cursor: pointer; white-space: nowrap; }
th { white-space: nowrap; } .outcome { max-width: 14rem; }
.token { margin: .3rem 0 .8rem; } .token input { width: 20rem; font: inherit; }
.story { border-bottom: 1px solid #eceef2; padding: .6rem 0; } .story:last-child { border-bottom: 0; }
.story h3 { font-size: 1rem; margin: 0 0 .2rem; }
.meta { color: #5b6475; font-size: .85rem; }
.evidence li { font-size: .85rem; }
.phrase { background: #eef2ff; border-radius: 3px; padding: 0 .25rem; margin-right: .2rem; }
#chart text { font-size: 11px; fill: #4a5262; } #chart .axis { stroke: #9aa3b2; }
#chart .stories { fill: #8fb3e8; } #chart .defence { fill: #c0392b; }
</style>
</head>
<body>
<h1>newsworker</h1>
<p class="sub">{{ totals.feeds }} feeds: {{ totals.failing }} failing, {{ totals.disabled }} disabled.
JSON: <a href="feeds">/feeds</a>, <a href="stories?tag=defence">/stories</a>, <a href="articles">/articles</a>,
<a href="openapi.json">/openapi.json</a>, <a href="metrics">/metrics</a>.</p>

<h2>Stories per day</h2>
<section>{{ chart }}</section>

<h2>Feeds</h2>
<section id="feeds">
<div class="token"><label>API token for "Fetch now" (NEWSWORKER_API_TOKEN, kept in this browser):
<input id="token" type="password" autocomplete="off" placeholder="token"></label></div>
<table>
<thead><tr><th>id</th><th>feed</th><th>status</th><th class="num">failures</th><th>last error</th>
<th>last success</th><th>next poll</th><th class="num" title="articles first seen in the last 24 hours">new 24 h</th><th></th></tr></thead>
<tbody>
{% for f in feeds %}
{% set label, cls = status(f) %}
<tr class="feed" data-feed-id="{{ f.id }}">
<td>{{ f.id }}</td>
<td>{{ f.name or f.title or "" }}<div class="url">{% if f.url|href %}<a href="{{ f.url }}" rel="noopener noreferrer">{{ f.url }}</a>{% else %}{{ f.url }}{% endif %}</div></td>
<td><span class="badge {{ cls }}">{{ label }}</span>{% if f.queued %} <span class="badge idle">queued</span>{% endif %}</td>
<td class="num">{{ f.error_count }}</td>
<td class="err">{% if not f.enabled %}{{ f.disabled_reason or "disabled by hand" }}{% else %}{{ (f.last_error or "")|truncate(300) }}{% endif %}</td>
<td>{{ f.last_success_at|when_cell }}</td>
<td>{% if f.enabled %}{{ f.next_fetch_at|when_cell }}{% endif %}</td>
<td class="num">{{ f.articles_24h }}</td>
<td><button type="button" class="fetch" data-feed-id="{{ f.id }}">Fetch now</button><span class="outcome" id="outcome-{{ f.id }}" role="status"></span></td>
</tr>
{% else %}
<tr><td colspan="9">No feeds yet: <code>newsworker feeds add URL</code> or <code>newsworker feeds import-opml config/feeds.opml</code>.</td></tr>
{% endfor %}
</tbody>
</table>
{% if totals.feeds > feeds|length %}<p class="meta">Showing {{ feeds|length }} of {{ totals.feeds }} feeds (failing first); all of them: <a href="feeds">/feeds</a>.</p>{% endif %}
</section>

<h2>Latest defence stories</h2>
<section id="defence">
{% for st in stories %}
<div class="story" data-story-id="{{ st.story_id }}">
<h3>{% if st.url|href %}<a href="{{ st.url }}" rel="noopener noreferrer">{{ st.title or st.url }}</a>{% else %}{{ st.title or st.url }}{% endif %}</h3>
<div class="meta">published {{ st.published_at|when or "—" }} · story {{ st.story_id }} ·
{{ st.articles|length }} cop{{ "y" if st.articles|length == 1 else "ies" }}</div>
<div class="meta">ran in: <span class="outlets">{{ st.outlets|join(", ") }}</span> · carried by {{ st.feeds|length }} feed{{ "s" if st.feeds|length != 1 }}: <span class="feeds">{{ st.feeds|join(", ") }}</span></div>
<ul class="evidence">
{% for t in st.tags if t.name == "defence" or t.name.startswith("defence.") %}
<li><strong>{{ t.name }}</strong> {{ "%.2f"|format(t.score) }}: {% for p in t.evidence[:8] %}<span class="phrase">{{ p }}</span>{% endfor %}</li>
{% endfor %}
</ul>
<div class="meta">copies: {% for c in st.articles %}{% if c.url|href %}<a href="{{ c.url }}" rel="noopener noreferrer">{{ c.outlet or c.url }}</a>{% else %}{{ c.outlet or c.url }}{% endif %}{{ ", " if not loop.last }}{% endfor %}</div>
</div>
{% else %}
<p class="meta">No defence stories yet.</p>
{% endfor %}
</section>

<script nonce="{{ nonce }}">
(function () {
  "use strict";
  var KEY = "newsworker.apiToken";
  var token = document.getElementById("token");
  try { token.value = localStorage.getItem(KEY) || ""; } catch (e) {}
  token.addEventListener("input", function () { try { localStorage.setItem(KEY, token.value); } catch (e) {} });
  function show(el, cls, text, detail) { el.className = "outcome " + cls; el.textContent = text; el.title = detail || ""; }
  document.querySelectorAll("button.fetch").forEach(function (btn) {
    btn.addEventListener("click", function () {
      var id = btn.getAttribute("data-feed-id");
      var out = document.getElementById("outcome-" + id);
      btn.disabled = true;
      show(out, "", "sending…");
      fetch("feeds/" + encodeURIComponent(id) + "/fetch", {
        method: "POST", headers: {"Authorization": "Bearer " + token.value}
      }).then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (body) {
          var detail = typeof body.detail === "string" ? body.detail : r.statusText;
          if (r.status === 202) show(out, "ok", "queued: task " + body.task_id);
          else if (r.status === 409) show(out, "warn", "already queued", detail);
          else if (r.status === 401) show(out, "fail", "token refused: type the API token above", detail);
          else show(out, "fail", "error " + r.status + ": " + detail);
        });
      }).catch(function (e) {
        show(out, "fail", "error: the API did not answer (" + e + ")");
      }).finally(function () { btn.disabled = false; });
    });
  });
})();
</script>
</body>
</html>
""")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def operator_page(s: Session = Depends(session)) -> HTMLResponse:
    feeds = list(s.exec(select(Feed).order_by(Feed.enabled, Feed.error_count.desc(), Feed.id).limit(MAX_FEEDS)).all())
    totals = s.execute(sa.select(sa.func.count(), sa.func.count().filter(Feed.error_count > 0),
                                 sa.func.count().filter(Feed.enabled.is_(False)))).one()
    nonce = secrets.token_urlsafe(16)
    html = TEMPLATE.render(
        nonce=nonce, feeds=feed_rows(s, feeds), stories=store.list_stories(s, tag="defence", limit=MAX_STORIES),
        chart=chart.svg(stories_per_day(s)),
        totals={"feeds": totals[0], "failing": totals[1], "disabled": totals[2]})
    csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
           "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return HTMLResponse(html, headers={"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
                                       "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"})
