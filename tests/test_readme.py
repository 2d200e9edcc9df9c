"""The tour in README.rst runs as printed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.rst"


def tour_code(heading: str = "A tour\n======") -> str:
    """The first literal block under *heading*: from its ``::`` to the next unindented line."""
    text = README.read_text(encoding="utf-8")
    start = text.index(heading)
    lines = text[start:].splitlines()
    opening = next(i for i, line in enumerate(lines) if line.endswith("::"))
    block = []
    for line in lines[opening + 1 :]:
        if line and not line.startswith(" "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block))


def test_the_tour_prints_what_its_comments_promise() -> None:
    code = tour_code()
    assert "create_bus" in code
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["to chat:42 : you said: hi", "1"]


def test_the_asyncio_example_prints_what_its_comment_promises() -> None:
    code = tour_code("From asyncio\n------------")
    assert "create_async_bus" in code
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["you said: hello"]
