"""Customer e-mails: rate limited, retried with a countdown, one sent a day later."""

from __future__ import annotations

from shop import db
from shop.celery import app

#: The review reminder goes out a day after the order.
REVIEW_REMINDER_DELAY = 24 * 3600


class SmtpBusy(Exception):
    """The mail relay asked us to come back later."""


#: How many more sends the mail relay refuses with SmtpBusy (tests set it).
smtp_busy = [0]


@app.task(bind=True, rate_limit="6/m", max_retries=3, default_retry_delay=30)
def send_email(self, to: str, subject: str) -> str:
    """Send one e-mail: at most 6 a minute per worker (the relay's quota)."""
    if smtp_busy[0] > 0:
        smtp_busy[0] -= 1
        raise self.retry(countdown=30)
    db.outbox.append((to, subject))
    return subject


@app.task
def remind_to_review(order_id: int) -> None:
    """A day after the order: ask for a review."""
    send_email.delay(db.orders[order_id]["email"], f"How was order {order_id}?")
