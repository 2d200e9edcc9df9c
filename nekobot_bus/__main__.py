"""``python -m nekobot_bus``: the ``nekobot-bus`` command."""

from .cli import main

raise SystemExit(main())
