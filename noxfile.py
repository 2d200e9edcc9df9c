"""The test matrix: every declared Python, the lowest and newest redis-py, lint once.

``bash scripts/test`` runs every session below; ``nox -s tests-3.12`` (from
``.venv/bin/``) runs one. A declared interpreter that is missing fails the
run with its name: a matrix that skips quietly proves nothing.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests", "redis_floor"]
nox.options.error_on_missing_interpreters = True
nox.options.reuse_venv = "yes"

ROOT = Path(__file__).parent
#: The Pythons ``setup.cfg`` declares, oldest first.
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
EVERYTHING = ".[redis,nats,mqtt,test,bench,flask]"
DOCS = ["README.rst", "CHANGES.rst", "benchmarks/README.rst", "tests/data/README.rst"]


def lowest_declared(extra: str | None = None) -> list[str]:
    """The requirements of *extra* in ``setup.cfg`` (``None``: the package's own) pinned to their
    floors: ``redis==5.0.0``."""
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg", encoding="utf-8")
    lines = setup["options"]["install_requires"] if extra is None else setup["options.extras_require"][extra]
    pins = []
    for line in lines.split("\n"):
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)\s*", line)
        if match:
            pins.append(f"{match[1]}=={match[2]}")
    return pins


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole pytest suite on one Python, with the newest releases of everything."""
    session.install("--upgrade", "-e", EVERYTHING)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PYTHONS[0])
def redis_floor(session: nox.Session) -> None:
    """Every test that touches Redis (``-k redis``: the Redis modules, and the contract, CLI and
    bench tests on Redis), and those of the codec, the message and the configuration, on the
    oldest Python with the oldest redis-py and hiredis declared, and the oldest attrs, cattrs
    and orjson.

    The other backends' tests do not import redis-py; the tests sessions run them on every
    Python already, and leaving them out here keeps CI well under its 30 minutes.
    """
    pins = lowest_declared("redis") + lowest_declared()
    session.install("-e", EVERYTHING, *pins)
    session.run(
        "python",
        "-c",
        "import importlib.metadata as m; print(*(f'{p} {m.version(p)}' for p in "
        "('redis', 'hiredis', 'attrs', 'cattrs', 'orjson')), sep=', ')",
    )
    session.run("python", "-m", "pytest", "-k", "redis", *session.posargs)
    floors = ["tests/test_codec.py", "tests/test_message.py", "tests/test_config.py"]
    session.run("python", "-m", "pytest", "-k", "not redis", *floors, *session.posargs)


@nox.session(python=PYTHONS[1])
def lint(session: nox.Session) -> None:
    """ruff, ``mypy --strict`` and the reStructuredText of every document, once."""
    session.install("-e", EVERYTHING, "nox")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")
    for document in DOCS:
        session.run("python", "-m", "docutils", "--halt=warning", document, "/dev/null")
