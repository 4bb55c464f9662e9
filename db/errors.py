"""The database's own errors (exit 3: cannot be reached or used; exit 2: a bad URL)."""

from __future__ import annotations


class DatabaseError(Exception):
    """The database cannot be used; the message names the URL (password hidden) and the fix."""

    exit_code = 3


class DatabaseUrlError(DatabaseError):
    """The URL itself is wrong (not a URL, a SQLite path that is a directory, is not a database, or lies in a
    directory that does not exist): bad input, exit 2 like every other, where exit 3 means a database that
    cannot be reached."""

    exit_code = 2
