"""Errors a user can fix: the CLI prints them without a traceback and exits 2."""


class UsageError(ValueError):
    """Bad input or settings, with the message saying what to do."""


def message(exc: BaseException) -> str:
    """What to print for a UsageError: raised in a Ray task, it arrives wrapped in Ray's traceback (a
    RayTaskError that is also a UsageError); the user needs only the task's own message."""
    cause = getattr(exc, "cause", None)
    return str(cause if isinstance(cause, BaseException) else exc)


class StorageError(RuntimeError):
    """The storage failed under a command (disk full, permission denied, S3 unreachable or throttling after
    retries): the CLI prints the one-line message, naming the storage, the path and what to do, and exits 4."""

    exit_code = 4

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind  # full | denied | unreachable | throttled

    @property
    def storage_down(self) -> bool:
        """Every further call would wait out its retries and fail too: better not to make any."""
        return self.kind in ("unreachable", "throttled")
