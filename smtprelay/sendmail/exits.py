"""Exit statuses (sendmail's ``<sysexits.h>``) and the failure that carries one."""

from __future__ import annotations

from smtprelay.errors import RelayError

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_CONFIG = 78


class SubmissionFailed(RelayError):
    """The message was not (completely) accepted; ``code`` is the exit status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
