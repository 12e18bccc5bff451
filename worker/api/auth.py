"""The bearer token that guards the one endpoint that changes anything (the manual fetch)."""

from __future__ import annotations

import hmac
from typing import Optional

from fastapi import HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..settings import Settings

# auto_error=False: a missing token is our 401 with a useful message, not FastAPI's 403.
bearer = HTTPBearer(auto_error=False, scheme_name="apiToken",
                    description="The value of NEWSWORKER_API_TOKEN on the API server: `Authorization: Bearer <token>`")


def require_token(settings: Settings, credentials: Optional[HTTPAuthorizationCredentials]) -> None:
    expected = settings.api_token
    if not expected:
        raise HTTPException(503, "manual fetch is turned off: no API token is configured; set NEWSWORKER_API_TOKEN "
                                 "where the API runs, restart it, and send 'Authorization: Bearer <token>'")
    given = credentials.credentials if credentials is not None else ""
    # Constant time: the comparison must not tell how much of a guess was right.
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, "missing or wrong API token: send 'Authorization: Bearer <token>' with the value of "
                                 "NEWSWORKER_API_TOKEN", headers={"WWW-Authenticate": "Bearer"})
