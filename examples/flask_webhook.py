"""A Flask webhook gateway: Telegram-style updates in, the agent's replies out.

Run it (Flask's threaded server; the bus starts with the first request)::

    python examples/flask_webhook.py --port 8080

then POST an update the way Telegram does::

    curl -X POST localhost:8080/telegram/webhook -H 'Content-Type: application/json' \\
         -d '{"update_id": 1, "message": {"chat": {"id": 42}, "from": {"id": 7, "username": "ann"},
              "text": "hello"}}'

The view turns the update into ``send_inbound``; an echo agent answers; the
outbound handler "delivers" each reply (here: prints it and keeps it for
``GET /telegram/sent``). A Slack-style slash command answers in its own
HTTP response instead, through ``bus.request``::

    curl -X POST localhost:8080/slack/command -d user_id=U7 -d channel_id=C42 -d text=hello

The extension's views, ``GET /bus/health`` and ``GET /bus/metrics``, are
mounted for requests from this machine only. Set
``NEKOBOT_BUS`` to a config (JSON) to run the same app on Redis, with the
agent in another process, under gunicorn with several workers::

    NEKOBOT_BUS='{"bus": {"type": "redis", "redis_addr": "localhost:6379"}}' \
        gunicorn -c gunicorn.conf.py -w 3 --threads 4 --preload \
        'flask_webhook:create_app(with_agent=False)'

(from ``examples/``): each worker starts its bus after the fork, and the
workers share one fan-out group, so each reply is delivered once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from typing import Any

from flask import Flask, abort, jsonify, request

from nekobot_bus import Message, NekobotBusError, RequestTimeoutError
from nekobot_bus.flask import NekobotBus

LOOPBACK = {"127.0.0.1", "::1"}
#: Slack wants a slash command's answer within 3 s; what is left is for the network.
SLACK_WAIT = 2.5


def create_app(config: dict[str, Any] | None = None, *, with_agent: bool = True) -> Flask:
    app = Flask(__name__)
    app.config["NEKOBOT_BUS"] = config or json.loads(
        os.environ.get("NEKOBOT_BUS", '{"bus": {"type": "local"}}')
    )
    nekobot = NekobotBus(app)
    views = nekobot.blueprint()  # addresses and counters: not for the whole internet

    @views.before_request
    def from_this_machine_only() -> None:
        if request.remote_addr not in LOOPBACK:
            abort(403)

    app.register_blueprint(views, url_prefix="/bus")
    delivered: list[dict[str, Any]] = []
    lock = threading.Lock()

    def deliver(message: Message) -> None:
        # A real gateway calls Telegram's sendMessage here.
        with lock:
            delivered.append(
                {"chat_id": message.session_id, "text": message.content, "reply_to": message.reply_to}
            )
        # One write per line: the workers of a server share this stdout.
        sys.stdout.write(f"to chat {message.session_id}: {message.content}\n")
        sys.stdout.flush()

    nekobot.bus.register_outbound_handler("telegram", deliver)
    if with_agent:

        def agent(message: Message) -> None:
            nekobot.bus.send_outbound(message.reply(f"echo: {message.content}"))

        nekobot.bus.register_inbound_handler("telegram", agent)
        nekobot.bus.register_inbound_handler("slack", agent)

    @app.post("/telegram/webhook")
    def webhook() -> tuple[str, int]:
        update = request.get_json(silent=True) or {}
        incoming = update.get("message") or {}
        if "text" not in incoming or "chat" not in incoming:
            return "not a text message", 400
        sender = incoming.get("from") or {}
        message = Message(
            id=f"telegram-{update.get('update_id')}",  # Telegram's id: a retried webhook is recognisable
            channel_id="telegram",
            session_id=str(incoming["chat"]["id"]),
            user_id=str(sender.get("id", "")),
            username=str(sender.get("username", "")),
            content=str(incoming["text"]),
        )
        try:
            nekobot.bus.send_inbound(message)
        except NekobotBusError as exc:  # Redis away, or the bus full: Telegram sends the update again
            app.logger.warning("update %s not taken: %s", update.get("update_id"), exc)
            return "bus unavailable, try again", 503
        return "", 204

    @app.post("/slack/command")
    def slash_command() -> Any:
        form = request.form
        if "text" not in form:
            return "no text", 400
        asked = Message(
            channel_id="slack",
            session_id=str(form.get("channel_id", "")),
            user_id=str(form.get("user_id", "")),
            content=str(form["text"]),
        )
        try:
            reply = nekobot.bus.request(asked, timeout=SLACK_WAIT)
        except RequestTimeoutError:
            return jsonify(response_type="ephemeral", text="The agent is still thinking; try again.")
        except NekobotBusError as exc:
            app.logger.warning("slash command not taken: %s", exc)
            return "bus unavailable, try again", 503
        return jsonify(response_type="in_channel", text=reply.content)

    @app.get("/telegram/sent")
    def sent() -> Any:
        with lock:
            return jsonify(list(delivered))

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    create_app().run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
