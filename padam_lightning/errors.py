"""Errors caused by user input.

Anything raised as :class:`UserError` is a mistake the user can fix (a missing data folder, a bad
config value, a path that is not a checkpoint). Command-line entry points print its message as one
line, without a traceback, and exit with status 2; library code can still catch it like any
exception.
"""


class UserError(Exception):
    """A problem with the user's input, explained in the message: what is wrong and how to fix it."""


class DataError(UserError):
    """Training or evaluation data that is missing, corrupt or malformed."""
