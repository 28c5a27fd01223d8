"""The Celery app, configured from ``shop.celeryconfig`` and finding the task modules."""

from celery import Celery

app = Celery("shop", task_cls="shop.base:ShopTask")
app.config_from_object("shop.celeryconfig")
app.autodiscover_tasks(["shop.orders", "shop.payments", "shop.inventory", "shop.emails"])

import shop.signals  # noqa: E402,F401  (connects the signal handlers)
