"""The FastAPI application: routes, the operator page and errors as `{"detail": ...}` JSON."""

from __future__ import annotations

from typing import Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from .. import __version__
from ..errors import FeedNotFound, InvalidQuery
from ..settings import Settings, get_settings
from . import page, routes

DESCRIPTION = """Read-only access to what newsworker stored — articles, stories, tags, feeds and
their health — and one action: `POST /feeds/{id}/fetch` polls a feed now (bearer token,
`NEWSWORKER_API_TOKEN`). Lists page with an opaque `cursor` (`next_cursor` of the previous
page; null on the last). Errors are JSON: `{"detail": "what happened and what to do"}`.
The operator page is at `/`."""


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    """The API on *settings* (default: the environment's).  Reads use its database URL and
    token; the manual fetch goes through :mod:`worker.runner`, which reads the process's
    settings, as the CLI does."""
    app = FastAPI(title="newsworker", version=__version__, description=DESCRIPTION,
                  # Swagger UI and ReDoc load scripts from a CDN; the API serves no external assets.
                  docs_url=None, redoc_url=None)
    app.state.settings = settings or get_settings()
    app.include_router(routes.router)
    app.include_router(page.router)

    @app.exception_handler(FeedNotFound)
    def _not_found(request: Request, exc: FeedNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(InvalidQuery)
    def _bad_query(request: Request, exc: InvalidQuery) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(OperationalError)
    def _db_down(request: Request, exc: OperationalError) -> JSONResponse:
        return JSONResponse({"detail": "the database does not answer; check NEWSWORKER_DATABASE_URL and that the "
                                       "server is up, then try again"}, status_code=503)

    return app
