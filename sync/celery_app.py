"""The Celery application, configured from plain values by the composition root.

With a broker URL (Redis) tasks go through the broker to worker processes; JSON
is the only serializer. Without one, askonce runs embedded: tasks execute
in-process, synchronously, through the very same task functions.
"""

from __future__ import annotations

from celery import Celery

DEFAULT_QUEUE = "askonce"
#: Results are only kept long enough for a caller waiting on them.
RESULT_EXPIRES_S = 3600
#: A worker takes one task at a time, so a long sync cannot starve the others.
PREFETCH_MULTIPLIER = 1
#: Beat asks this often which sources are due (see :mod:`sync.scheduling`); a tick
#: not picked up before the next one is worthless, so it expires.
SCHEDULER_TICK_S = 30.0
#: Beat sends the outbox's events to Subscriptions and webhooks this often by default.
DELIVERY_TICK_S = 5.0
#: Beat deletes what is past its retention this often by default (see sync.retention).
PRUNE_TICK_S = 3600.0


def beat_schedule(
    delivery_interval_s: float = DELIVERY_TICK_S,
    prune_interval_s: float = PRUNE_TICK_S,
    schedule_interval_s: float = SCHEDULER_TICK_S,
) -> dict[str, dict[str, object]]:
    """The beat entries: one tick that dispatches every due source's run, one that
    delivers the change events and one that prunes what is past its retention (each
    expires: a tick not picked up before the next one is worthless)."""
    return {
        "askonce-sync-due-sources": {
            "task": "askonce.sync.schedule_due",
            "schedule": schedule_interval_s,
            "options": {"expires": schedule_interval_s},
        },
        "askonce-deliver-events": {
            "task": "askonce.sync.deliver",
            "schedule": delivery_interval_s,
            "options": {"expires": delivery_interval_s},
        },
        "askonce-prune": {
            "task": "askonce.sync.prune",
            "schedule": prune_interval_s,
            "options": {"expires": prune_interval_s},
        },
    }


def create_celery(
    broker_url: str | None,
    *,
    queue: str = DEFAULT_QUEUE,
    delivery_interval_s: float = DELIVERY_TICK_S,
    prune_interval_s: float = PRUNE_TICK_S,
    schedule_interval_s: float = SCHEDULER_TICK_S,
) -> Celery:
    """A Celery app: Redis broker and result backend when ``broker_url`` is set, else eager."""
    app = Celery("askonce", include=["sync.tasks"])
    common = {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": queue,
        "task_acks_late": False,  # only idempotent tasks opt in, per task
        "enable_utc": True,
        "worker_hijack_root_logger": False,
    }
    if broker_url:
        app.conf.update(
            broker_url=broker_url,
            result_backend=broker_url,
            result_expires=RESULT_EXPIRES_S,
            worker_prefetch_multiplier=PREFETCH_MULTIPLIER,
            broker_connection_retry_on_startup=True,
            task_reject_on_worker_lost=True,
            beat_schedule=beat_schedule(delivery_interval_s, prune_interval_s, schedule_interval_s),
            **common,
        )
    else:
        app.conf.update(
            broker_url="memory://",
            result_backend="cache+memory://",
            task_always_eager=True,
            task_eager_propagates=True,
            task_store_eager_result=True,
            **common,
        )
    # The process's default app, not only the current app of the thread that made it:
    # a task sent from another thread (a request's background task in the API's thread
    # pool: the push intake's catch-up, a source's removal) otherwise went to Celery's
    # own default app, which knows no broker but amqp://localhost and is never eager.
    app.set_default()
    return app
