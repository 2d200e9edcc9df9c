"""gunicorn settings for the Flask example: every worker starts its bus right after the fork.

Without this hook a worker's bus starts with the worker's first request, and
a worker that has served nothing yet receives nothing. Use it with
``--preload`` or without: the app (and its bus, not started) is built before
the hook runs either way. Run from ``examples/``::

    gunicorn -c gunicorn.conf.py -w 3 --threads 4 --preload 'flask_webhook:create_app(with_agent=False)'
"""

from typing import Any

from nekobot_bus.flask import start_in_background


def post_worker_init(worker: Any) -> None:
    start_in_background(worker.wsgi)
