"""Errors that the ``recsearch`` command reports as one clear line instead of a traceback."""


class RecsearchError(Exception):
    """Base of every error caused by the user's input rather than by a bug."""


class ConfigError(RecsearchError, ValueError):
    """A configuration or search space that cannot work: raised before data is read or Ray starts."""


class DataError(RecsearchError, ValueError):
    """A data file that cannot be read as configured; the message names the file, line and column."""
