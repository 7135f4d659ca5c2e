"""The task dispatch of ganjax.systems (what ganjax.main calls for config.task)."""

import json

import pytest

from ganjax import systems


def test_unknown_task_names_the_valid_ones():
  with pytest.raises(ValueError, match="'gann'.*valid choices: classifier, gan"):
    systems.get_system("gann")


def test_every_task_is_a_system_module():
  assert {"classifier", "gan", "lapgan", "srgan", "vae"} <= set(systems.available_systems())
  assert systems.get_system("classifier").__name__ == "ganjax.systems.classifier"


def test_every_system_module_trains():
  for name in systems.available_systems():
    assert callable(systems.get_system(name).train_and_evaluate), name


def test_workdir_task_reads_the_config(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"task": "classifier"}))
  assert systems.workdir_task(str(tmp_path)) == "classifier"
  (tmp_path / "config.json").write_text(json.dumps({"seed": 0}))
  assert systems.workdir_task(str(tmp_path)) == "gan"


def test_workdir_without_a_run_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a ganjax workdir"):
    systems.workdir_task(str(tmp_path / "missing"))


def test_a_mode_the_system_lacks_is_a_clear_error(monkeypatch):
  module = type("FakeSystem", (), {"train_and_evaluate": staticmethod(lambda c, w: None)})
  monkeypatch.setattr(systems, "get_system", lambda task: module)
  with pytest.raises(ValueError, match="--mode=upscale is not supported by task 'fake'"):
    systems.mode_function("fake", "upscale", "upscale_file")
