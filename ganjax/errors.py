"""Errors in what the user asked for, as opposed to bugs in ganjax.

A :class:`UserError` carries a message that names the bad value and the valid choices or the fix.
The command line (``ganjax.main``) prints it in one or two lines without a traceback and exits
with status 2 (``--traceback`` shows the traceback). Any other exception is a programming error
and keeps its traceback.

Each subclass also derives from the built-in exception a caller would expect (``ValueError`` for
a bad config value, ``FileNotFoundError`` for a missing path, ...), so ``except ValueError`` keeps
working.
"""

from __future__ import annotations

# The command line's exit status for a user error (absl's usage errors use 1).
USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
  """An error in the user's config, command line, data or workdir; the message says what to do."""


class ConfigError(UserError, ValueError):
  """A config field has an invalid name or value."""


class DataError(UserError, ValueError):
  """The data cannot be read, or is not what the config asked for (shape, channels, classes)."""


class MissingPathError(UserError, FileNotFoundError):
  """A file or folder the user named (config, data, workdir, checkpoint, input) does not exist."""


class WorkdirError(UserError, RuntimeError):
  """The workdir cannot be used as asked: locked by another run, changed config, read-only."""


class CheckpointError(UserError, RuntimeError):
  """A checkpoint is missing, damaged, non-finite, or does not fit the config."""
