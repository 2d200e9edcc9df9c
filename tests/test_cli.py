"""The nekobot-bus command, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys

TIMEOUT = 30


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from nekobot_bus.cli import main; raise SystemExit(main())", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_demo_echoes_each_line_through_the_bus() -> None:
    done = run("demo", stdin="hello\nwie geht's?\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["echo: hello", "echo: wie geht's?"]


def test_demo_with_a_bad_config_says_what_is_wrong() -> None:
    done = run("demo", "--config", '{"bus": {"type": "kafka"}}')
    assert done.returncode == 2
    assert "bus.type 'kafka' is not a known backend" in done.stderr


def test_help_lists_the_commands() -> None:
    done = run("--help")
    assert done.returncode == 0
    assert "demo" in done.stdout
