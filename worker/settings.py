"""Settings from the environment (prefix ``NEWSWORKER_``), read when asked for, never at import."""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import Field, field_validator
from typing import Annotated, Literal, Optional

from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "config"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NEWSWORKER_", extra="ignore")

    var_dir: Path = Path("var")
    database_url: str = ""
    # Default broker needs no server: kombu's SQLAlchemy transport on an SQLite file.
    broker_url: str = ""
    result_backend: str = ""

    # "host:port,host:port": loopback/private addresses that may still be fetched (tests, demo).
    allowed_private_hosts: Annotated[list[str], NoDecode] = []

    user_agent: str = "newsworker/0.1 (+https://github.com/newsworker/newsworker; news feed ingestion)"
    connect_timeout: float = 10.0
    read_timeout: float = 20.0
    request_deadline: float = 60.0       # whole request, redirects included: a dripping server is cut off
    max_feed_bytes: int = 10 * 1024 * 1024
    max_page_bytes: int = 5 * 1024 * 1024
    max_entries_per_feed: int = 500
    max_text_chars: int = 200_000

    default_interval: int = 900          # seconds between polls of a feed
    min_interval: int = 60
    max_interval: int = 86_400
    max_backoff: int = 6 * 3600
    disable_after_failures: int = 20     # consecutive permanent failures
    redirect_confirmations: int = 3      # polls that must see the same permanent redirect before the URL changes
    claim_timeout: int = 900             # a queued poll older than this is re-dispatched
    dispatch_interval: float = 60.0      # beat sends the dispatcher this often (seconds)
    dispatch_max: int = 20_000           # polls one dispatcher run queues at most
    poll_batch: int = 25                 # feeds per poll task the dispatcher sends
    poll_threads: int = 16               # feed fetches in flight at once, per worker process
    entry_batch: int = Field(8, ge=1, le=32)  # new entries per article task (their pages fetched ahead)

    # Redis broker: an unacknowledged message is redelivered after this long (seconds);
    # above the longest task limit plus the longest retry countdown.
    visibility_timeout: int = 3600
    max_deliveries: int = 5              # a task started more often than this goes to the dead letters
    raw_retention_days: int = 30         # raw page and feed bytes kept for `newsworker reextract`
    change_retention_days: int = 90      # change-feed rows kept: a consumer must read within this long

    # Politeness, shared by every worker through Redis (per process on the embedded default).
    polite_max_concurrent: int = 2       # requests in flight per host
    polite_min_delay: float = 1.0        # seconds between two requests to a host
    polite_max_wait: float = 10.0        # a task waits this long for its host, else re-queues itself
    polite_lease_seconds: float = 120.0  # a slot a killed worker held is freed after this
    robots_enabled: bool = True          # article pages respect robots.txt

    # Operations (docs/operations.md): worker task metrics are written here by every pool
    # process (prometheus_client multiprocess mode); empty means <var_dir>/metrics.
    metrics_dir: Optional[Path] = None
    metrics_port: Optional[int] = None   # the worker serves its task metrics on this port when set
    log_format: Literal["text", "json"] = "text"
    api_token: str = ""                  # bearer token for POST /feeds/{id}/fetch; empty: that endpoint is off

    tagging_rules: Path = CONFIG_DIR / "tagging.yaml"
    entity_rules: Path = CONFIG_DIR / "entities.yaml"
    feeds_opml: Path = CONFIG_DIR / "feeds.opml"
    celery_config: Path = CONFIG_DIR / "celery.py"

    @field_validator("allowed_private_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [h.strip().lower() for h in value.split(",") if h.strip()]
        return value

    def model_post_init(self, __context: object) -> None:
        var = self.var_dir.resolve()
        if self.metrics_dir is None:
            self.metrics_dir = var / "metrics"
        if not self.database_url:
            self.database_url = f"sqlite:///{var / 'newsworker.db'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{var / 'broker.db'}"
        if not self.result_backend:
            if self.broker_url.startswith(("redis://", "rediss://")):
                self.result_backend = self.broker_url
            else:
                self.result_backend = f"db+sqlite:///{var / 'results.db'}"

    @property
    def embedded(self) -> bool:
        """True when running on the server-less default (SQLite broker)."""
        return self.broker_url.startswith("sqla+sqlite")


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    settings = Settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    return settings
