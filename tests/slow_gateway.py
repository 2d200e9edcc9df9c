"""A gateway app whose delivery takes 100 ms, as a call to Telegram's API does: for the killed-worker test.

Served by gunicorn with ``--pythonpath tests``; each worker prints one line
per delivered reply, with its process id.
"""

from __future__ import annotations

import json
import os
import sys
import time

from flask import Flask

from nekobot_bus import Message
from nekobot_bus.flask import NekobotBus

DELIVERY_SECONDS = 0.1


def create_app() -> Flask:
    app = Flask("slow_gateway")
    app.config["NEKOBOT_BUS"] = json.loads(os.environ["NEKOBOT_BUS"])
    nekobot = NekobotBus(app)

    def deliver(message: Message) -> None:
        time.sleep(DELIVERY_SECONDS)
        sys.stdout.write(f"delivered {message.id} by {os.getpid()}\n")
        sys.stdout.flush()

    nekobot.bus.register_outbound_handler("telegram", deliver)
    return app
