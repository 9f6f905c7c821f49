"""The project's errors for bad input: each prints as one line and exits with code 2.

Every error that the user's input caused (a flag, a config value, a sweep file, a data folder, a
results folder) is a :class:`UserError`; the command line catches that one class. Anything else
is a bug or a fault and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: the message is one line naming the value and what is valid."""


class ConfigError(UserError):
    """A configuration value that cannot be used."""


class DataError(UserError):
    """Data that cannot be read: a missing root, a missing, truncated or foreign file."""


class SweepError(UserError):
    """A sweep that cannot run: a bad sweep file, an empty grid, an invalid trial."""


class ReportError(UserError):
    """Results that cannot be reported on."""


class UsageError(UserError):
    """A bad flag or argument of a command."""
