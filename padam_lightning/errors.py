"""Errors caused by user input.

Anything raised as :class:`UserError` is a mistake the user can fix (a missing data folder, a bad
config value, a path that is not a checkpoint). Command-line entry points print its message as one
line, without a traceback, and exit with status 2; library code can still catch it like any
exception.
"""


class UserError(Exception):
    """A problem with the user's input; the message says what is wrong and how to fix it."""

    #: Process exit status the command-line tools use for this error.
    exit_code = 2


class DataError(UserError):
    """Training or evaluation data that is missing, corrupt or malformed."""


class TrainingDivergedError(UserError):
    """The loss or the weights became NaN or infinite; the message names the step and the cause."""

    exit_code = 1
