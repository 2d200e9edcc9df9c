"""Server addresses as they may be shown: in ``repr()``, logs, errors, ``health()`` and the CLI's output."""

from __future__ import annotations

from urllib.parse import quote, urlsplit

__all__ = ["redact"]


def redact(url: str) -> str:
    """*url* without its secret: the password, or a lone user part (a NATS token looks like a user).

    Works on URLs that are not valid too (a bad port), since errors about
    them show them: the host and port are kept as written.
    """
    parts = urlsplit(url)
    credentials, _, hostport = parts.netloc.rpartition("@")
    if ":" in credentials:  # user:password (or :password): the user is not the secret
        shown_user = f"{quote(parts.username)}@" if parts.username else ""
    else:  # a lone user part may be a token
        shown_user = "***@" if credentials else ""
    return f"{parts.scheme}://{shown_user}{hostport}{parts.path}"
