"""The errors users see: a one-line message naming the problem and the fix."""

import errno
from pathlib import Path

from abtest_api.constants import USER_ERROR_EXIT, WRITE_FAILURE_EXIT


class UserError(Exception):
    """Bad input. The CLI prints ``error: <message>`` without a traceback and exits 2."""

    exit_code = USER_ERROR_EXIT

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))  # always one line


class NameConflict(UserError):
    """An object an ABTest must create exists already and belongs to something else."""


class WriteFailure(UserError):
    """An output file could not be written: the volume is full, read-only or not writable for this user. Nothing
    half-written is left; the CLI exits 3, which the Jobs' Pod Failure Policy does not retry either."""

    exit_code = WRITE_FAILURE_EXIT

    FIXES = {  # by errno: what to do about it
        errno.ENOSPC: "free space on the results volume (spec.results) or write elsewhere (--out)",
        errno.EDQUOT: "raise the volume's quota or free space on it (spec.results)",
        errno.EROFS: "mount the results volume read-write (spec.results) or write elsewhere (--out)",
        errno.EACCES: "make the folder writable for the user the evaluator runs as (UID 65532 in its image)",
        errno.EPERM: "make the folder writable for the user the evaluator runs as (UID 65532 in its image)",
    }

    @classmethod
    def of(cls, path: Path | str, err: OSError) -> "WriteFailure":
        fix = cls.FIXES.get(err.errno, "check the results volume (spec.results) and its mount")
        return cls(f"cannot write {path}: {err.strerror or err}; {fix}")
