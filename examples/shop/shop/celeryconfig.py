"""The shop's Celery settings, loaded with ``app.config_from_object("shop.celeryconfig")``."""

broker_url = "redis://localhost:6379/0"
result_backend = "redis://localhost:6379/1"

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
timezone = "UTC"

task_track_started = True

# kombu's default visibility timeout on Redis is one hour. The shop's longest countdown
# (the review reminder, emails.tasks.REVIEW_REMINDER_DELAY) is a day: keep the timeout
# above it, or Redis hands the waiting message out again and the e-mail goes twice
# (kombu issue #337; tests/test_bugs.py shows it).
broker_transport_options = {"visibility_timeout": 2 * 24 * 3600}
