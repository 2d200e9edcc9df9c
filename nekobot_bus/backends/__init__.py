"""Bus backends: one module each, registered in :mod:`nekobot_bus.config`."""
