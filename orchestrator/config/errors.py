"""User-facing errors: every one names where (file, line, field), what is wrong, and the fix.

The CLI prints `str(error)` and exits non-zero; no traceback reaches the user for these.
"""

from __future__ import annotations


class OrchError(Exception):
    """An error the user can fix; `str()` is the whole message."""

    exit_code = 2


class ConfigError(OrchError):
    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None, fix: str | None = None) -> None:
        self.file, self.line, self.field, self.fix, self.detail = file, line, field, fix, message
        where = file or "<input>"
        if line is not None:
            where += f":{line}"
        text = f"{where}: "
        if field:
            text += f"{field}: "
        text += message
        if fix:
            text += f" (fix: {fix})"
        super().__init__(text)


class ConfigErrors(OrchError):
    """Several config errors found at once; printed one per line."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))
