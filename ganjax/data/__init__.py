"""Data sources: ``create_source(config.data, ...)`` picks the module that serves ``data.name``.

There is no central registry. Every module in this package that defines

* ``NAMES``: the data names it serves (for help messages),
* ``PRIORITY``: an int; the highest-priority claiming module wins,
* ``claims(data_config) -> bool``,
* ``create(data_config, *, seed, batch_size, process_index, process_count) -> DataSource``

is a source. Adding a source means adding one module.

Every source is checked (:mod:`ganjax.data.checks`): the requests ``data.image_size`` and
``data.channels`` must be honoured, and a dataset known by name must be what its name says (shape,
channels, classes, split size), so a run never trains on other data than its config names.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from types import ModuleType

import ml_collections

from ganjax.data import checks
from ganjax.data.source import DataSource, host_batch_size
from ganjax.errors import ConfigError

__all__ = ["DataSource", "create_source", "source_modules", "valid_names"]

_SOURCE_ATTRIBUTES = ("NAMES", "PRIORITY", "claims", "create")


@functools.cache
def source_modules() -> tuple[ModuleType, ...]:
  """The source modules of this package, highest priority first."""
  modules = []
  for info in pkgutil.iter_modules(__path__):
    if info.name.startswith("_"):
      continue
    module = importlib.import_module(f"{__name__}.{info.name}")
    if all(hasattr(module, attribute) for attribute in _SOURCE_ATTRIBUTES):
      modules.append(module)
  return tuple(sorted(modules, key=lambda m: (-m.PRIORITY, m.__name__)))


def valid_names() -> list[str]:
  """Every data name some source module lists in its ``NAMES``, sorted."""
  return sorted({name for module in source_modules() for name in module.NAMES})


def create_source(
  data_config: ml_collections.ConfigDict,
  *,
  seed: int,
  batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
) -> DataSource:
  """Builds the data source for ``data_config`` (``config.data``).

  Args:
    data_config: ``name``, ``dir``, ``split``, ``image_size`` and optional source-specific fields.
    seed: Shuffling / sampling seed.
    batch_size: Global batch size (all hosts); each host gets ``batch_size // process_count``.
    process_index: This host's index.
    process_count: Number of hosts.

  Returns:
    The :class:`DataSource`; ``source.batches(step)`` iterates this host's batches.

  Raises:
    ConfigError: unknown ``data.name`` (the message lists the valid names), a bad batch size,
      ``data.image_size`` or ``data.channels``.
    DataError: the data is not what the config asks for (see :mod:`ganjax.data.checks`).
  """
  host_batch_size(batch_size, process_count)
  checks.check_request(data_config)
  name = data_config.get("name")
  for module in source_modules():
    if module.claims(data_config):
      source = module.create(
        data_config,
        seed=seed,
        batch_size=batch_size,
        process_index=process_index,
        process_count=process_count,
      )
      checks.check_output(source, data_config)
      return source
  raise ConfigError(
    f"Unknown data.name {name!r}. Valid names: {', '.join(valid_names())}; any TensorFlow "
    "Datasets name (e.g. 'mnist', 'cifar10', 'celeb_a') also works through the tfds source."
  )
