"""Sweep files (ganjax.sweep.spec): the list helpers, run names and groups, and the checks that
turn a bad sweep into a one-line error naming the run, the bad value and the fix. Pure Python: no
training, no JAX."""

import os

import pytest
from conftest import REPO_ROOT

from ganjax import errors
from ganjax.sweep import SweepError, load_sweep, product, runs, seeds, spec, zip_runs

GM = os.path.join(REPO_ROOT, "configs", "gaussian_mixture.py")
DCGAN = os.path.join(REPO_ROOT, "configs", "dcgan.py")


def _names(entries):
  return [(r.name, r.group) for r in spec.make_runs(entries)]


def test_product_zip_seeds_build_plain_dicts():
  sweep = product({"config": GM}, runs("optim.g.learning_rate", [1e-4, 1e-3]), seeds(3))
  assert len(sweep) == 6
  assert sweep[0] == {"config": GM, "optim.g.learning_rate": 1e-4, "seed": 0}
  assert sweep[-1] == {"config": GM, "optim.g.learning_rate": 1e-3, "seed": 2}
  assert seeds([4, 7]) == [{"seed": 4}, {"seed": 7}]
  paired = zip_runs(runs("optim.g.learning_rate", [1, 2]), runs("optim.d.learning_rate", [3, 4]))
  assert paired == [
    {"optim.g.learning_rate": 1, "optim.d.learning_rate": 3},
    {"optim.g.learning_rate": 2, "optim.d.learning_rate": 4},
  ]
  with pytest.raises(SweepError, match="set 'seed'"):
    product(seeds(2), {"seed": 5})
  with pytest.raises(SweepError, match=r"different lengths \[2, 3\]"):
    zip_runs(seeds(2), runs("batch_size", [1, 2, 3]))


def test_names_hold_what_varies_with_the_seed_last_and_groups_drop_it():
  sweep = product(
    runs("seed", [0, 1]),
    {"config": f"{GM}:runlocal", "batch_size": 64},  # The same in every run: not in the name.
    runs("optim.g.learning_rate", [1e-4, 1e-3]),
  )
  assert _names(sweep) == [
    ("optim.g.learning_rate=0.0001,seed=0", "optim.g.learning_rate=0.0001"),
    ("optim.g.learning_rate=0.001,seed=0", "optim.g.learning_rate=0.001"),
    ("optim.g.learning_rate=0.0001,seed=1", "optim.g.learning_rate=0.0001"),
    ("optim.g.learning_rate=0.001,seed=1", "optim.g.learning_rate=0.001"),
  ]
  # Config string arguments name runs too; an argument other runs set shows as "default".
  named = _names(
    product(runs("config", [f"{GM}:dataset=grid,method=pacgan2", f"{GM}:dataset=ring"]), seeds(1))
  )
  assert named == [
    ("dataset=grid,method=pacgan2", "dataset=grid,method=pacgan2"),
    ("dataset=ring,method=default", "dataset=ring,method=default"),
  ]
  # Different config files: the file's name; tuples joined with "_"; a seed-only sweep's group "".
  assert (
    _names([{"config": f"{DCGAN}:runlocal"}, {"config": GM, "model.generator.hidden": (8, 8)}])[1]
    == ("config=gaussian_mixture,runlocal=default,model.generator.hidden=8_8",) * 2
  )
  assert _names(product({"config": GM}, seeds(2))) == [("seed=0", ""), ("seed=1", "")]
  assert _names([{"config": GM}]) == [("gaussian_mixture", "gaussian_mixture")]


def test_names_are_one_safe_path_component():
  assert spec.format_value(1e-4) == "0.0001" and spec.format_value(1e-5) == "1e-05"
  name = _names([{"config": GM, "data.dir": "/data/a b"}, {"config": GM}])[0][0]
  assert name == "data.dir=_data_a_b"
  long = [{"config": GM, "data.dir": "x" * 400}, {"config": GM}]
  name = _names(long)[0][0]
  assert len(name) == spec.MAX_NAME_LENGTH and "/" not in name
  assert _names(long)[0][0] == name  # Deterministic: the same run keeps its workdir.


@pytest.mark.parametrize(
  "entries, message",
  [
    ({"config": GM}, "returned dict, not a list of dicts"),
    ([], "returned no runs"),
    ([{"config": GM}, 3], r"run 1 \(of 2\) is a int, not a dict"),
    (
      [{"config": GM}, {"optim.g.learning_rate": 1e-3}],
      r"run 1 \(of 2\) has no 'config' key .*its keys: 'optim.g.learning_rate'",
    ),
    (
      [{"config": GM, "optim.g.lr": 1e-3}],
      r"run 0 \(of 1\): .*gaussian_mixture.py has no field 'optim.g.lr'; did you mean "
      "optim.g.learning_rate",
    ),
    ([{"config": GM, "num_train_steps": "many"}], r"cannot set num_train_steps='many'"),
    ([{"config": f"{GM}:method=gann"}], r"run 0 \(of 1\): config .*Unknown method 'gann'; valid"),
    (
      [{"config": GM, "seed": 1}, {"config": GM, "seed": 1}],
      r"runs 0 and 1 both get the name 'gaussian_mixture' \(they are the same run\)",
    ),
    (
      [{"config": GM, "data.dir": "a/b"}, {"config": GM, "data.dir": "a_b"}],
      r"runs 0 and 1 both get the name 'data.dir=a_b' \(their values differ only in",
    ),
  ],
)
def test_invalid_runs_are_one_line_user_errors(entries, message):
  with pytest.raises(SweepError, match=message) as info:
    spec.make_runs(entries, source="sweep.py")
  assert isinstance(info.value, errors.UserError)
  assert "\n" not in str(info.value) and str(info.value).startswith("sweep.py: ")


def test_missing_config_file_names_the_run_and_the_close_file(tmp_path):
  with pytest.raises(errors.MissingPathError, match=r"run 0 \(of 1\).*did you mean .*dcgan.py"):
    spec.make_runs([{"config": os.path.join(REPO_ROOT, "configs", "dcgann.py")}])


def test_load_sweep_file_errors(tmp_path):
  with pytest.raises(errors.MissingPathError, match=r"--sweep=.*swep.py: no such file; did you"):
    (tmp_path / "sweep.py").write_text("def get_sweep():\n  return []\n")
    load_sweep(str(tmp_path / "swep.py"))
  (tmp_path / "nothing.py").write_text("def runs():\n  return []\n")
  with pytest.raises(SweepError, match=r"defines no get_sweep\(\) \(it defines: runs\)"):
    load_sweep(str(tmp_path / "nothing.py"))
  (tmp_path / "good.py").write_text(
    "from ganjax.sweep import product, runs, seeds\n"
    "def get_sweep():\n"
    f"  return product({{'config': {GM!r}}}, runs('batch_size', [50, 100]), seeds(2))\n"
  )
  loaded = load_sweep(str(tmp_path / "good.py"))
  assert [r.name for r in loaded] == [
    "batch_size=50,seed=0",
    "batch_size=50,seed=1",
    "batch_size=100,seed=0",
    "batch_size=100,seed=1",
  ]
  assert loaded[3].overrides == {"batch_size": 100, "seed": 1} and loaded[3].config == GM
  assert loaded[3].to_json()["group"] == "batch_size=100"


def test_the_mode_collapse_study_is_a_sweep_of_80_runs_in_16_groups():
  """experiments/mode_collapse_2d/sweep.py: every method of the config on ring and grid, 5 seeds,
  each method with its own step count (the config's STEPS), grouped over the seeds."""
  cwd = os.getcwd()
  os.chdir(REPO_ROOT)  # The sweep names its config relative to the repository, as launched.
  try:
    study = load_sweep(os.path.join(REPO_ROOT, "experiments", "mode_collapse_2d", "sweep.py"))
  finally:
    os.chdir(cwd)
  assert len(study) == 80 and len({run.name for run in study}) == 80
  groups = {run.group for run in study}
  assert len(groups) == 16
  assert "dataset=ring,method=gan" in groups and "dataset=grid,method=pacgan4" in groups
  assert sorted(
    run.overrides["seed"] for run in study if run.group == "dataset=grid,method=gan"
  ) == [
    0,
    1,
    2,
    3,
    4,
  ]
