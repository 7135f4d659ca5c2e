"""What a run prints and logs: ganjax's progress lines, not the libraries' bookkeeping.

A training run's log is read by a person: the progress line (losses, steps/s, img/s, ETA), what
was written where, evaluations, warnings. The libraries under it log their own bookkeeping at INFO
through absl (orbax: some 15 lines per checkpoint save; clu's logging writer: every scalar a
second time), and TensorFlow's C++ start-up notes go to stderr. :func:`quiet_libraries` keeps
their warnings and errors and drops their INFO records unless ``--verbosity`` >= 1 asks for them;
:func:`create_writer` writes scalars and images to TensorBoard only (the progress line is the
log), one writer per tag.

TensorFlow's oneDNN note (two lines when it loads, logged by its C++ code before any log setting
applies) still shows; ``TF_CPP_MIN_LOG_LEVEL`` silences its later INFO messages.
"""

from __future__ import annotations

import logging as std_logging
import os

from absl import logging

# Python packages whose INFO records are bookkeeping, not news for the user.
CHATTY_PACKAGES = ("orbax", "clu", "tensorflow_datasets", "etils", "jax", "flax")


def quiet_tensorflow() -> None:
  """TensorFlow's C++ INFO notes (oneDNN, CPU features) stay silent; set before it is imported."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


class _LibraryInfoFilter(std_logging.Filter):
  """Drops records below WARNING logged from a file inside one of :data:`CHATTY_PACKAGES`."""

  def __init__(self, packages=CHATTY_PACKAGES):
    super().__init__()
    self._parts = tuple(f"{os.sep}{name}{os.sep}" for name in packages)

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.WARNING:
      return True
    return not any(part in (record.pathname or "") for part in self._parts)


_FILTER = _LibraryInfoFilter()


def quiet_libraries(verbosity: int | None = None) -> None:
  """Hides the INFO records of :data:`CHATTY_PACKAGES` (idempotent); ``verbosity`` >= 1 (absl's
  ``--verbosity``; default: the current absl verbosity) shows them again."""
  if verbosity is None:
    verbosity = logging.get_verbosity()
  handler = logging.get_absl_handler()
  if verbosity >= 1:
    handler.removeFilter(_FILTER)
  elif _FILTER not in handler.filters:
    handler.addFilter(_FILTER)


def show_progress() -> None:
  """From Python (a notebook, a script): INFO logs to stderr as the CLI shows them, library
  bookkeeping hidden. absl otherwise keeps INFO records back until its flags are parsed."""
  if logging.get_verbosity() < logging.INFO:  # absl: WARNING is -1, INFO 0, DEBUG 1.
    logging.set_verbosity(logging.INFO)
  logging.use_absl_handler()
  quiet_libraries()


class NoWriter:
  """The metric writer of the other processes of a multi-process run: writes nothing."""

  def write_scalars(self, step, scalars) -> None:
    del step, scalars

  def write_images(self, step, images) -> None:
    del step, images

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def create_writer(workdir: str, is_chief: bool):
  """The run's metric writer: TensorBoard events in ``workdir`` on the chief
  (:class:`ganjax.summary_writer.SummaryWriter`, clu's writer methods without TensorFlow's
  import), nothing elsewhere (:class:`NoWriter`).

  The scalars are logged once, by the run's progress line; clu's default writer would log each
  a second time.
  """
  if not is_chief:
    return NoWriter()
  from ganjax import summary_writer

  return summary_writer.SummaryWriter(workdir)
