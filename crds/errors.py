"""The errors users see: a one-line message naming the problem and the fix."""


class UserError(Exception):
    """Bad input. The CLI prints ``error: <message>`` without a traceback and exits 2."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))  # always one line


class NameConflict(UserError):
    """An object an ABTest must create exists already and belongs to something else."""
