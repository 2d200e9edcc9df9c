"""The redis-py releases the Redis backends accept, and the error for the others."""

from __future__ import annotations

import subprocess
import sys

import pytest
import redis

from nekobot_bus import ConfigError
from nekobot_bus.backends.redis import compat as _redis_py


@pytest.mark.parametrize("installed", ["4.6.0", "3.5.3", "5", "garbage"])
def test_an_older_or_unreadable_release_is_refused_naming_both_versions(installed: str) -> None:
    with pytest.raises(ConfigError) as info:
        _redis_py.check_version(installed)
    assert installed in str(info.value)
    assert "redis-py >= 5.0.0" in str(info.value)


@pytest.mark.parametrize("installed", ["5.0.0", "5.3.1", "6.4.0", "8.1.0", "10.0.0b1", redis.__version__])
def test_supported_releases_pass(installed: str) -> None:
    _redis_py.check_version(installed)


def test_create_bus_on_an_old_redis_py_raises_config_error_not_a_looping_reader() -> None:
    script = (
        "import redis; redis.__version__ = '4.6.0'\n"
        "from nekobot_bus import ConfigError, create_bus\n"
        "try:\n"
        "    create_bus({'bus': {'type': 'redis'}})\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "redis-py 4.6.0 is installed" in done.stdout
    assert "redis-py >= 5.0.0" in done.stdout
