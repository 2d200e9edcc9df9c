"""create_bus(): config shapes, validation errors, the backend registry."""

from __future__ import annotations

import json
import logging
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
        (
            {"bus": {"type": "local", "workerz": 2}},
            r"unknown key bus.workerz \(did you mean bus.workers\?\); bus accepts: .*workers",
        ),
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


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"type": "redis", "redis_addr": "localhost:6379"}, r"type, redis_addr belong under 'bus'"),
        ({"workers": 2}, r"workers belongs under 'bus'"),
        ({"message_queue_size": 10}, r"message_queue_size belongs under 'gateway'"),
        ({"buss": {"type": "redis"}}, r"'buss' is not read; did you mean 'bus'\?"),
        ({"bsu": {"type": "redis"}}, r"did you mean 'bus'\?"),
        ({"gatway": {"message_queue_size": 10}}, r"did you mean 'gateway'\?"),
        ({"Bus": {"workers": 2}}, r"did you mean 'bus'\?"),
        ({"rediss": {"addr": "h:6379"}}, r"did you mean 'redis'\?"),
        ({"bus": {"type": "local"}, "redis_password": "x"}, r"redis_password belongs under 'bus'"),
        ({"bus": {"redis_addr": "h:6379"}}, r"bus.type is 'local' when not given: add \"type\": \"redis\""),
        ({"bus": {"nats_url": "nats://h"}}, r"add \"type\": \"nats\""),
        ({"bus": {"mqtt_url": "mqtt://h"}}, r"add \"type\": \"mqtt\""),
        ({"bus": {"type": "local", "wokers": 2}}, r"did you mean bus\.workers\?\)"),
    ],
)
def test_a_config_that_would_silently_build_a_local_bus_is_refused(config: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_bus(config)


def test_other_sections_of_a_go_config_stay_ignored() -> None:
    config = {
        "bus": {"type": "local"},
        **{key: {} for key in ["agents", "channels", "tools", "providers", "heartbeat", "users", "logging"]},
        # Near misses of a section's name that are a gateway's own sections, not typos:
        "reddit": {"client_id": "x", "subreddits": ["python"]},
        "gateways": [{"name": "telegram"}],
        "buses": {"routes": 3},
    }
    assert isinstance(create_bus(config), LocalBus)


@pytest.mark.parametrize(
    ("bus", "message"),
    [
        ({"redis_addr": "redis://localhost:6379"}, "bus.redis_addr is host:port.*not a URL"),
        ({"redis_addr": "localhost:port"}, "bus.redis_addr: the port must be a number from 1 to 65535"),
        ({"redis_addr": "localhost:0"}, "bus.redis_addr: the port must be a number from 1 to 65535"),
        ({"redis_addr": "localhost:6379/2"}, "bus.redis_addr is host:port"),
        ({"redis_url": "localhost:6379"}, r"bus.redis_url must be a URL .* \(no scheme\)"),
        ({"redis_url": "http://localhost:6379/0"}, "bus.redis_url must start with one of redis://"),
        ({"redis_url": "redis://localhost:70000/0"}, "bus.redis_url: the port must be a number"),
        ({"redis_url": "redis://localhost:6379/x"}, "the database in the URL path must be a number"),
        ({"redis_addr": "redis://:hunter2@h:6379"}, r"not a URL: 'redis://h:6379'"),
        ({"redis_addr": "u:hunter2@h:6379"}, r"is host:port, like 'localhost:6379', not 'u@h:6379'"),
        ({"redis_url": ":hunter2@h:6379"}, r"not 'h:6379' \(no scheme\)"),
        (
            {"redis_url": "redis://:hunter2@:6379/0"},
            r"bus.redis_url names no host: 'redis://:6379/0'",
        ),
    ],
)
def test_redis_addresses_are_checked_when_the_bus_is_built(bus: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_bus({"bus": {"type": "redis", **bus}})


def test_create_bus_logs_what_it_built_without_the_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="nekobot_bus")
    create_bus({"bus": {"type": "redis", "redis_url": "redis://:hunter2@127.0.0.1:6390/2"}})
    assert "create_bus built <RedisBus new redis://127.0.0.1:6390/2" in caplog.text
    assert "hunter2" not in caplog.text
