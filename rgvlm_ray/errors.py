"""Errors a user can fix: the CLI prints them without a traceback and exits 2."""


class UsageError(ValueError):
    """Bad input or settings, with the message saying what to do."""
