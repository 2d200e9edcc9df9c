"""Text from chat users, made safe to print on an operator's terminal.

A chat user controls message content, usernames, channel and session ids.
Printed raw, ``ESC [2J`` clears the operator's screen, ``ESC ] 0;...``
retitles the window, and ``\\r`` or ``\\n`` forge whole lines of output. So
every control character (C0, DEL, C1), every format character (bidi
overrides, zero-width joiners) and the line and paragraph separators are
shown as visible escapes (``\\x1b``, ``\\u202e``), and text mode cuts a long
field, saying how much was left out.
"""

from __future__ import annotations

import json
import unicodedata

__all__ = ["LONGEST", "json_line", "visible"]

#: The characters of one field text mode shows; ``--json`` shows everything.
LONGEST = 300

_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in _UNSAFE_CATEGORIES


def visible(text: str, longest: int | None = LONGEST) -> str:
    """*text* with each unsafe character escaped, cut after *longest* characters (``None``: whole)."""
    cut = "" if longest is None or len(text) <= longest else f"… [{len(text) - longest} more characters]"
    if longest is not None:
        text = text[:longest]
    if text.isprintable() and text.isascii():  # the common case, at C speed
        return text + cut
    return "".join(_escape(c) if _unsafe(c) else c for c in text) + cut


def json_line(document: object) -> str:
    """*document* as one line of JSON, non-ASCII kept, every unsafe character as a ``\\u`` escape.

    ``json.dumps`` escapes C0 controls but not C1 controls (``\\x9b`` is a
    terminal's CSI) nor bidi overrides; inside a JSON string any character
    may be written as ``\\uXXXX``, and these occur only inside strings.
    """
    text = json.dumps(document, ensure_ascii=False)
    if text.isascii() and "\x7f" not in text:  # json.dumps escapes the other ASCII controls
        return text
    return "".join(f"\\u{ord(c):04x}" if _unsafe(c) else c for c in text)
