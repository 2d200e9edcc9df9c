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

Building the extension builds the bus but starts nothing, so a process that
serves nothing (Werkzeug's reloader watcher, gunicorn's master with
``--preload``) never runs one. Each serving process starts its own, in a
thread of the extension (``nekobot-bus-starter``) that keeps trying with a
growing pause while its server is away, so no request waits for it:

- under gunicorn, call :func:`start_in_background` from the
  ``post_worker_init`` hook (``examples/gunicorn.conf.py``): every worker
  then receives from its start, whether or not it has served a request;
- otherwise the first request of the process starts it.

Meanwhile the health view answers 503 with the reason, and what requests
send waits in the bus (a Redis bus holds up to ``message_queue_size`` x
``workers`` messages for its start, then refuses at once with
``BusFullError``). Once started, a send during a Redis outage raises
``BusConnectionError`` (at once when the outage is older than
``send_timeout``): a webhook answers 503 and the sender retries, as
Telegram and Slack do. Handlers may be registered at any time. One start per
process, under a lock; a bus found started by a parent process before a
fork raises, since its threads did not survive the fork. The bus is stopped
(draining what it holds) when the process exits normally.

Views
-----

The health and metrics views show the Redis address, the process id and
every counter, so they are not mounted unless asked: register
:meth:`NekobotBus.blueprint` where the app wants them, behind its own
authentication (``blueprint.before_request``), or set
``NEKOBOT_BUS_URL_PREFIX`` (e.g. ``"/bus"``) to mount them there:

``GET {prefix}/health``
    JSON with ``status`` (``ok`` or ``unavailable``), the ``reason`` when
    unavailable, the backend, its ``health()``, and the metrics: 200 when the
    bus runs (and, on Redis, its reader is connected), else 503. For load
    balancers; it never waits for the bus.
``GET {prefix}/metrics``
    The metrics in Prometheus' text format when ``prometheus_client`` is
    installed (the ``prometheus`` extra), else as JSON.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from .bus import Bus
from .config import create_bus, load_config
from .errors import ConfigError, NekobotBusError

__all__ = ["EXTENSION_KEY", "NekobotBus", "start_in_background"]

logger = logging.getLogger("nekobot_bus.flask")

#: Where the extension keeps its state in ``app.extensions``.
EXTENSION_KEY = "nekobot_bus"


class _BusState:
    """One app's bus, the process that started it, and the thread that keeps trying to.

    A request never waits for the bus to start: the first request of a
    process starts a thread (``nekobot-bus-starter``) that calls
    ``bus.start()`` until it succeeds, with a growing pause, so a server
    that is down delays nobody and the bus comes up by itself when it is
    back. What a request sends meanwhile waits in the bus (a Redis bus
    holds up to ``message_queue_size`` x ``workers`` messages for its start and then
    raises ``BusFullError`` at once).
    """

    def __init__(self, bus: Bus, stop_timeout: float) -> None:
        self.bus = bus
        self.stop_timeout = stop_timeout
        self._lock = threading.Lock()  # quick checks only: requests take it
        self._start_lock = threading.Lock()  # held across bus.start(): never by a request
        self._started_in: int | None = None
        self._starter: threading.Thread | None = None
        self._exit_hook = False
        self._attempting = False  # the starter is trying (not waiting between tries)
        self._stopping = threading.Event()
        #: Why the last start failed, for the health view; ``None`` once started.
        self.start_error: str | None = None

    def ensure_started(self) -> None:
        """Start the bus in the background, once per process; never waits for it."""
        pid = os.getpid()
        if self._started_in == pid:  # every request after the first: no lock
            return
        with self._lock:
            self._refuse_a_forked_bus(pid)
            if self._started_in == pid or (self._starter is not None and self._starter.is_alive()):
                return
            starter = threading.Thread(target=self._keep_starting, name="nekobot-bus-starter", daemon=True)
            self._starter = starter
            self._attempting = True
            self._stop_at_exit()
            starter.start()

    def start_now(self) -> None:
        """Start the bus in this thread (raising what ``start()`` raises), once per process."""
        with self._start_lock:
            pid = os.getpid()
            self._refuse_a_forked_bus(pid)
            if self._started_in != pid:
                self._stop_at_exit()
                self._start(pid)

    def _refuse_a_forked_bus(self, pid: int) -> None:
        if self._started_in is not None and self._started_in != pid:
            raise RuntimeError(
                f"the nekobot bus was started in process {self._started_in} before it forked into "
                f"{pid}; its threads did not survive the fork. Start it in each process after the "
                "fork (start_in_background() from the server's post-fork hook, or the first request)."
            )

    def _start(self, pid: int) -> None:
        self.bus.start()
        self._started_in = pid
        self.start_error = None

    def _stop_at_exit(self) -> None:
        if not self._exit_hook:
            self._exit_hook = True
            atexit.register(self.stop)

    def _keep_starting(self) -> None:
        pause = 0.5
        while not self._stopping.is_set():
            try:
                with self._start_lock:
                    if self._started_in == os.getpid() or self._stopping.is_set():
                        return
                    self._start(os.getpid())
                return
            except NekobotBusError as exc:
                self.start_error = str(exc)
                logger.warning("the nekobot bus could not start (%s); trying again in %.1f s", exc, pause)
            except Exception as exc:  # a bug, not an outage: said loudly, and still retried with backoff
                self.start_error = f"{type(exc).__name__}: {exc}"
                logger.exception("the nekobot bus could not start; trying again in %.1f s", pause)
            self._attempting = False
            if self._stopping.wait(pause):
                return
            self._attempting = True
            pause = min(pause * 2, 30.0)

    def stop(self) -> bool:
        starter = self._starter
        if starter is not None and self._attempting:
            starter.join(self.stop_timeout / 2)  # a start under way finishes: what it took is drained
        self._stopping.set()
        if starter is not None:
            starter.join(self.stop_timeout / 4)
        if self._started_in not in (None, os.getpid()):
            return True  # a parent's bus: its threads are not in this process
        # Also when no start succeeded: a late one then raises, and what was sent is counted dropped.
        stopped = self.bus.stop(timeout=self.stop_timeout / 4)
        return stopped and not (starter is not None and starter.is_alive())


class NekobotBus:
    """The Flask extension: ``NekobotBus(app)``, or ``NekobotBus()`` then :meth:`init_app`.

    Config keys: ``NEKOBOT_BUS``, what :func:`~nekobot_bus.create_bus` takes
    (a mapping, JSON text or a file path; default: the local bus);
    ``NEKOBOT_BUS_GROUP``, the fan-out group of the app's processes (default:
    the app's import name; ``None`` or ``""``: every process handles every
    message); ``NEKOBOT_BUS_URL_PREFIX`` (default ``None``: the views are
    not mounted; see :meth:`blueprint`); ``NEKOBOT_BUS_STOP_TIMEOUT``
    (seconds, default 10).

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
            app.config.get("NEKOBOT_BUS_GROUP", _app_name(app)),
        )
        state = _BusState(create_bus(config), float(app.config.get("NEKOBOT_BUS_STOP_TIMEOUT", 10.0)))
        app.extensions[EXTENSION_KEY] = state
        app.before_request(state.ensure_started)
        prefix = app.config.get("NEKOBOT_BUS_URL_PREFIX")
        if prefix is not None:
            app.register_blueprint(self.blueprint(), url_prefix=prefix)

    def _state(self, app: Flask | None = None) -> _BusState:
        target = app or self._app or current_app
        try:
            state: _BusState = target.extensions[EXTENSION_KEY]
        except KeyError:
            raise RuntimeError("init_app() was not called for this app") from None
        return state

    @staticmethod
    def blueprint(name: str = "nekobot_bus") -> Blueprint:
        """A new blueprint of the views, ``/health`` and ``/metrics``, for the app to mount.

        ::

            views = nekobot.blueprint()

            @views.before_request
            def only_operators():
                if request.headers.get("Authorization") != OPERATOR_TOKEN:
                    abort(403)

            app.register_blueprint(views, url_prefix="/internal/bus")
        """
        views = Blueprint(name, __name__)
        views.add_url_rule("/health", "health", _health)
        views.add_url_rule("/metrics", "metrics", _metrics)
        return views

    @property
    def bus(self) -> Bus:
        """The bus of the app (the one passed in, else the current app); maybe not started yet."""
        return self._state().bus

    def start_in_background(self, app: Flask | None = None) -> None:
        """Start the bus in the extension's thread now, without waiting: see :func:`start_in_background`."""
        self._state(app).ensure_started()

    def start(self, app: Flask | None = None) -> Bus:
        """Start the bus now, in this process and this thread, instead of on the first request.

        :raises BusConnectionError: the bus's server could not be reached.
        """
        state = self._state(app)
        state.start_now()
        return state.bus

    def stop(self, app: Flask | None = None) -> bool:
        """Stop the bus (draining it); ``True`` if every thread ended in time."""
        return self._state(app).stop()


def _app_name(app: Flask) -> str:
    """The app's import name; for an app run as a script (``__main__``), the script's name,
    so that two different scripts on one Redis are not one group."""
    if app.import_name != "__main__":
        return app.import_name
    script = getattr(sys.modules.get("__main__"), "__file__", None)
    return Path(script).stem if script else app.import_name


def start_in_background(app: Flask) -> None:
    """Start *app*'s bus in this process now, in the background; for a server's post-fork hook.

    Under gunicorn, in the config file (``examples/gunicorn.conf.py``)::

        from nekobot_bus.flask import start_in_background

        def post_worker_init(worker):
            start_in_background(worker.wsgi)

    so each worker receives from its start, not from its first request. It
    returns at once; the bus keeps trying while its server is away.

    :raises RuntimeError: *app* has no nekobot bus, or its bus was started
        before the fork.
    """
    try:
        state: _BusState = app.extensions[EXTENSION_KEY]
    except (AttributeError, KeyError):
        raise RuntimeError(f"{app!r} has no nekobot bus: NekobotBus(app) was not called") from None
    state.ensure_started()


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


def _health() -> tuple[Response, int]:
    state = _state()
    bus = state.bus
    health = bus.health()
    ok = bus.running and bool(health.get("connected"))
    body = {
        "status": "ok" if ok else "unavailable",
        "reason": None if ok else state.start_error or ("stopped" if not bus.running else "not connected"),
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
        if key in ("no_handler", "dropped", "claimed_elsewhere"):
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
