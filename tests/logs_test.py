"""ganjax.logs: library INFO hidden unless asked for, and one TensorBoard writer per tag."""

import collections
import glob
import logging as std_logging
import os

import pytest
import tensorflow as tf
from absl import logging
from conftest import load_config

from ganjax import logs
from ganjax.systems import gan


def _record(pathname: str, level: int) -> std_logging.LogRecord:
  return std_logging.LogRecord("absl", level, pathname, 1, "message", (), None)


@pytest.mark.parametrize(
  "pathname, level, shown",
  [
    ("/venv/site-packages/orbax/checkpoint/_src/atomicity.py", std_logging.INFO, False),
    ("/venv/site-packages/clu/metric_writers/logging_writer.py", std_logging.INFO, False),
    ("/venv/site-packages/jax/_src/xla_bridge.py", std_logging.INFO, False),
    ("/venv/site-packages/orbax/checkpoint/checkpoint_manager.py", std_logging.WARNING, True),
    ("/venv/site-packages/orbax/checkpoint/checkpoint_manager.py", std_logging.ERROR, True),
    ("/work/main/ganjax/loop.py", std_logging.INFO, True),  # "ganjax" is not "jax".
    ("/work/main/ganjax/systems/srgan.py", std_logging.INFO, True),
  ],
)
def test_library_info_is_hidden_and_warnings_shown(pathname, level, shown):
  assert logs._FILTER.filter(_record(pathname, level)) is shown


def test_verbosity_shows_library_info_again():
  handler = logging.get_absl_handler()
  try:
    logs.quiet_libraries(verbosity=0)
    logs.quiet_libraries(verbosity=0)  # Idempotent: one filter.
    assert handler.filters.count(logs._FILTER) == 1
    logs.quiet_libraries(verbosity=1)
    assert logs._FILTER not in handler.filters
  finally:
    handler.removeFilter(logs._FILTER)


def _tensorboard_entries(workdir: str) -> list[tuple[str, int]]:
  entries = []
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      entries += [(value.tag, event.step) for value in event.summary.value]
  return entries


def test_each_tensorboard_tag_is_written_once_per_step(tmp_path):
  config = load_config("gaussian_mixture", "dataset=ring,runlocal")
  config.parallel.num_devices = 1
  config.num_train_steps = 4
  config.log_every_steps = 2
  gan.train_and_evaluate(config, str(tmp_path))
  entries = _tensorboard_entries(str(tmp_path))
  repeated = [entry for entry, n in collections.Counter(entries).items() if n > 1]
  assert not repeated, repeated
  tags = {tag for tag, _ in entries}
  assert {"steps_per_sec", "images_per_sec", "d_loss", "g_loss"} <= tags, tags
  assert "uptime" not in tags  # clu's ReportProgress scalar: the loop has its own timing.
  assert sorted(step for tag, step in entries if tag == "steps_per_sec") == [2, 4]
