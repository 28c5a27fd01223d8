"""A small web shop's Celery project: the sample project simq's documentation tests.

Importing the package loads the Celery app, as Django projects do, so that
``@shared_task`` functions and ``celery -A shop worker`` find it.
"""

from shop.celery import app

__all__ = ["app"]
