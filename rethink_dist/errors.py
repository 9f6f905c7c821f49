"""The project's errors for bad input: each prints as one line and exits with code 2.

Every error that the user's input caused (a flag, a config value, a sweep file, a data folder, a
results folder) is a :class:`UserError`; the command line catches that one class. A result that
cannot be written is a :class:`WriteFailed` (one line, exit code 1). Anything else is a bug or a
fault and keeps its traceback.
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


class WriteFailed(OSError):
    """A result file that could not be written (a full disk, a file-size limit, a read-only file
    system): not bad input, so not a UserError. The command prints its one line and exits with 1."""

    def __init__(self, path, error: OSError):
        super().__init__(error.errno, f"could not write {str(path)!r}: {error.strerror or error}")
