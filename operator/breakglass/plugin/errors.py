"""The plugin's exit codes and the one exception that carries them to `main`.

Exit codes: 0 ok; 1 the thing asked about is not ok (rejected, invalid token, broken audit chain,
explain says it would be rejected); 2 usage error; 3 cluster/API error; 4 not found; 5 timed out.
"""

from __future__ import annotations

OK, NOT_OK, USAGE, API_ERROR, NOT_FOUND, TIMEOUT = 0, 1, 2, 3, 4, 5


class CliError(Exception):
    def __init__(self, message: str, code: int = API_ERROR):
        super().__init__(message)
        self.code = code


def try_or(fn, default):
    """fn(), or `default` when it fails with a CliError (an optional lookup that may be forbidden)."""
    try:
        return fn()
    except CliError:
        return default
