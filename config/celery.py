"""Celery settings an operator may tune (loaded by worker.celery_app; broker and
result backend come from NEWSWORKER_BROKER_URL / NEWSWORKER_RESULT_BACKEND)."""

from kombu import Exchange, Queue

# Separate queues so slow article pages never starve feed polling.  Run dedicated
# workers with `newsworker worker --queues feeds` / `--queues articles` to scale each.
task_queues = (
    Queue("feeds", Exchange("feeds"), routing_key="feeds"),
    Queue("articles", Exchange("articles"), routing_key="articles"),
)
task_default_queue = "feeds"
task_routes = {
    "worker.tasks.dispatch_due_feeds": {"queue": "feeds"},
    "worker.tasks.poll_feed": {"queue": "feeds"},
    "worker.tasks.poll_feeds": {"queue": "feeds"},
    "worker.tasks.process_entry": {"queue": "articles"},
    "worker.tasks.process_entries": {"queue": "articles"},
    "worker.tasks.purge_expired": {"queue": "feeds"},
}

# At-least-once delivery: acknowledge after the task ran; a killed worker's task is redelivered.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

# Every task has limits (seconds); tasks override these where they need less.
task_soft_time_limit = 120
task_time_limit = 150

# Redis: the visibility timeout (redelivery of unacknowledged messages) is
# NEWSWORKER_VISIBILITY_TIMEOUT; other transport options go here.
broker_transport_options = {}
result_expires = 24 * 3600
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True
broker_connection_retry_on_startup = True
worker_hijack_root_logger = False

# Beat: exactly one beat process per deployment sends these.  The dispatcher's
# interval is NEWSWORKER_DISPATCH_INTERVAL (60 s by default).
beat_schedule = {
    "dispatch-due-feeds": {"task": "worker.tasks.dispatch_due_feeds", "schedule": 60.0},
    # raw page and feed bodies older than NEWSWORKER_RAW_RETENTION_DAYS
    "purge-expired": {"task": "worker.tasks.purge_expired", "schedule": 3600.0},
}
