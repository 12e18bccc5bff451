"""newsworker: news feed ingestion (poll → parse → extract → dedupe → tag → store)."""

__version__ = "0.1.0"
