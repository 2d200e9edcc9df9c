"""Flask integration: one bus per process, from ``app.config``, with health and metrics views.

::

    from flask import Flask
    from nekobot_bus.flask import NekobotBus

    app = Flask(__name__)
    app.config["NEKOBOT_BUS"] = {"bus": {"type": "redis", "redis_addr": "localhost:6379"}}
    nekobot = NekobotBus(app)            # or NekobotBus() and nekobot.init_app(app)
    nekobot.bus.register_outbound_handler("telegram", deliver_to_telegram)

    @app.post("/telegram/webhook")
    def webhook():
        nekobot.bus.send_inbound(...)
        return "", 204

When the bus starts
-------------------

Building the extension builds the bus but starts nothing: no thread exists
until the first request of a process (or an explicit :meth:`NekobotBus.start`).
So the bus runs once per serving process and never in Werkzeug's reloader
watcher, which serves no request; with ``gunicorn --preload`` each worker
starts its own after the fork. Handlers may be registered at any time. The
start is guarded by a lock, so concurrent first requests on Flask's
threaded server start it once; a bus found started by a parent process
before a fork raises, since its threads did not survive the fork. The bus
is stopped (draining what it holds) when the process exits normally.

Views
-----

A blueprint under ``NEKOBOT_BUS_URL_PREFIX`` (default ``/bus``):

``GET /bus/health``
    JSON with ``status`` (``ok`` or ``unavailable``), the backend, its
    ``health()``, and the metrics: 200 when the bus runs
    (and, on Redis, its reader is connected), else 503. For load balancers.
``GET /bus/metrics``
    The metrics in Prometheus' text format when ``prometheus_client`` is
    installed (the ``prometheus`` extra), else as JSON.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from .bus import Bus
from .config import create_bus, load_config
from .errors import ConfigError

__all__ = ["EXTENSION_KEY", "NekobotBus"]

#: Where the extension keeps its state in ``app.extensions``.
EXTENSION_KEY = "nekobot_bus"


class _BusState:
    """One app's bus, and the process that started it."""

    def __init__(self, bus: Bus, stop_timeout: float) -> None:
        self.bus = bus
        self.stop_timeout = stop_timeout
        self._lock = threading.Lock()
        self._started_in: int | None = None

    def ensure_started(self) -> None:
        pid = os.getpid()
        if self._started_in == pid:  # every request after the first: no lock
            return
        with self._lock:
            if self._started_in == pid:
                return
            if self._started_in is not None:
                raise RuntimeError(
                    f"the nekobot bus was started in process {self._started_in} before it forked into "
                    f"{pid}; its threads did not survive the fork. Let the extension start it on the "
                    "first request of each process, or call start() after the fork."
                )
            self.bus.start()
            self._started_in = pid
            atexit.register(self.stop)

    def stop(self) -> bool:
        if self._started_in != os.getpid():
            return True
        return self.bus.stop(timeout=self.stop_timeout)


class NekobotBus:
    """The Flask extension: ``NekobotBus(app)``, or ``NekobotBus()`` then :meth:`init_app`.

    Config keys: ``NEKOBOT_BUS``, what :func:`~nekobot_bus.create_bus` takes
    (a mapping, JSON text or a file path; default: the local bus);
    ``NEKOBOT_BUS_GROUP``, the fan-out group of the app's processes (default:
    the app's import name; ``None`` or ``""``: every process handles every
    message); ``NEKOBOT_BUS_URL_PREFIX`` (default ``/bus``; ``None``: no
    views); ``NEKOBOT_BUS_STOP_TIMEOUT`` (seconds, default 10).

    The workers of a web app each run a bus, and on the Redis fan-out each
    would receive, and deliver, every outbound message: every user would get
    every reply once per worker. So on ``type: redis`` with the fan-out
    delivery, the extension puts the app's processes in one ``bus.group``
    unless the config names one: each message is handled by one worker, at
    most once (the queue delivery gives at least once).
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._app = app
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Build the app's bus from its config and add the start hook and the views."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(f"{app.name!r} already has a nekobot bus")
        config = _grouped(
            load_config(app.config.get("NEKOBOT_BUS") or {"bus": {"type": "local"}}),
            app.config.get("NEKOBOT_BUS_GROUP", app.import_name),
        )
        state = _BusState(create_bus(config), float(app.config.get("NEKOBOT_BUS_STOP_TIMEOUT", 10.0)))
        app.extensions[EXTENSION_KEY] = state
        app.before_request(state.ensure_started)
        prefix = app.config.get("NEKOBOT_BUS_URL_PREFIX", "/bus")
        if prefix is not None:
            app.register_blueprint(_views(), url_prefix=prefix)

    def _state(self, app: Flask | None = None) -> _BusState:
        target = app or self._app or current_app
        try:
            state: _BusState = target.extensions[EXTENSION_KEY]
        except KeyError:
            raise RuntimeError("init_app() was not called for this app") from None
        return state

    @property
    def bus(self) -> Bus:
        """The bus of the app (the one passed in, else the current app); maybe not started yet."""
        return self._state().bus

    def start(self, app: Flask | None = None) -> Bus:
        """Start the bus now, in this process, instead of on the first request."""
        state = self._state(app)
        state.ensure_started()
        return state.bus

    def stop(self, app: Flask | None = None) -> bool:
        """Stop the bus (draining it); ``True`` if every thread ended in time."""
        return self._state(app).stop()


def _grouped(config: dict[str, Any], group: object) -> dict[str, Any]:
    """*config* with the app's *group* on a Redis fan-out bus that names none."""
    bus = config.get("bus")
    if not group or not isinstance(bus, Mapping) or bus.get("type") != "redis" or "group" in bus:
        return config
    if bus.get("delivery", "fanout") != "fanout":
        return config
    if not isinstance(group, str):
        raise ConfigError(f"NEKOBOT_BUS_GROUP must be a string or None, not {group!r}")
    return {**config, "bus": {**bus, "group": group}}


def _state() -> _BusState:
    state: _BusState = current_app.extensions[EXTENSION_KEY]
    return state


def _views() -> Blueprint:
    views = Blueprint("nekobot_bus", __name__)
    views.add_url_rule("/health", "health", _health)
    views.add_url_rule("/metrics", "metrics", _metrics)
    return views


def _health() -> tuple[Response, int]:
    bus = _state().bus
    health = bus.health()
    ok = bus.running and bool(health.get("connected"))
    body = {
        "status": "ok" if ok else "unavailable",
        "backend": type(bus).__name__,
        "running": bus.running,
        "health": health,
        "metrics": bus.get_metrics(),
    }
    return jsonify(body), 200 if ok else 503


def _metrics() -> Response | tuple[Response, int]:
    bus = _state().bus
    metrics, gauges = bus.get_metrics(), bus.gauge_names()
    try:
        from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415 - optional
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: PLC0415
    except ImportError:
        return jsonify(metrics), 200
    families: dict[str, Any] = {}
    for key, value in metrics.items():
        if key in ("no_handler", "dropped"):
            continue  # sums of the per-direction counters, which Prometheus adds up itself
        name, _, suffix = key.rpartition("_")
        labelled = suffix in ("in", "out")
        base = name if labelled else key
        if base not in families:
            kind = GaugeMetricFamily if key in gauges else CounterMetricFamily
            families[base] = kind(
                f"nekobot_bus_{base}",
                f"nekobot_bus {base.replace('_', ' ')}",
                labels=["direction"] if labelled else None,
            )
        if labelled:
            families[base].add_metric(["inbound" if suffix == "in" else "outbound"], value)
        else:
            families[base].add_metric([], value)

    class _Collector:
        def collect(self) -> Any:
            return iter(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4; charset=utf-8")
