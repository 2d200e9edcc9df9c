"""create_bus(): config shapes, validation errors, the backend registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import nekobot_bus
from nekobot_bus import ConfigError, LocalBus, create_bus, register_backend


def test_no_config_gives_the_local_bus_with_defaults() -> None:
    bus = create_bus()
    assert isinstance(bus, LocalBus)
    assert (bus.queue_size, bus.workers, bus.send_timeout, bus.dispatch) == (100, 4, 5.0, "threaded")


def test_documented_shape_as_mapping_json_and_path(tmp_path: Path) -> None:
    config = {
        "bus": {"type": "local", "workers": 2, "send_timeout": 1, "dispatch": "inline"},
        "gateway": {"message_queue_size": 7, "port": 8080},
        "agents": {"ignored": True},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    for source in (config, json.dumps(config), path, str(path)):
        bus = create_bus(source)
        assert isinstance(bus, LocalBus)
        assert (bus.queue_size, bus.workers, bus.send_timeout, bus.dispatch) == (7, 2, 1.0, "inline")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"bus": {"type": "kafka"}}, r"bus.type 'kafka' is not a known backend; known: .*'local'"),
        ({"bus": {"type": 3}}, "bus.type must be a string"),
        ({"bus": {"type": "local", "workerz": 2}}, "unknown key bus.workerz; bus accepts: .*workers"),
        ({"bus": {"workers": 0}}, r"bus.workers must be an integer >= 1, not 0"),
        ({"bus": {"workers": "4"}}, "bus.workers must be an integer, not '4'"),
        ({"bus": {"workers": True}}, "bus.workers must be an integer"),
        ({"bus": {"send_timeout": -1}}, r"bus.send_timeout must be a number >= 0.0"),
        ({"bus": {"dispatch": "async"}}, "bus.dispatch must be one of 'threaded', 'inline'"),
        ({"gateway": {"message_queue_size": -5}}, "gateway.message_queue_size must be an integer >= 1"),
        ({"bus": []}, "bus must be an object"),
        ("{not json", "config JSON is not valid JSON"),
        ("[1]", "cannot read config file"),
        ("/nonexistent/nekobot.json", "cannot read config file '/nonexistent/nekobot.json'"),
    ],
)
def test_bad_configs_name_the_key_and_the_rule(config: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_bus(config)


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="nope"):
        create_bus({"bus": {"type": "nope"}})


class EchoBus(LocalBus):
    type_name = "echo"


def test_third_party_backends_can_be_registered() -> None:
    register_backend("echo", EchoBus)
    assert isinstance(create_bus({"bus": {"type": "echo"}}), EchoBus)
    assert "echo" in nekobot_bus.available_backends()
    with pytest.raises(TypeError):
        register_backend("bad", dict)  # type: ignore[arg-type]
