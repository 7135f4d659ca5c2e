"""ganjax.sweep.results: the collected table of a sweep, from fake run workdirs on disk.

No training: every run's ``metrics.jsonl`` is written by :func:`ganjax.loop.run` itself (a step
that does nothing, an ``evaluate`` that returns the values below), its ``config.json`` by
:func:`ganjax.loop.write_config` and its ``eval/step_N.json`` by
:func:`ganjax.evaluation.save_evaluation`, so a change of those formats breaks these tests.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics

import numpy as np
import pytest
from conftest import load_config
from PIL import Image

from ganjax import evaluation, loop
from ganjax.sweep import results

STEPS = 6
EVERY = 2
INF = math.inf

# Mixture evaluations per seed: step -> values (seed 0 has no high-quality sample at step 2).
GAN = {
  0: {
    2: {"modes": 3, "hq_fraction": 0.5, "reverse_kl": INF},
    4: {"modes": 5, "hq_fraction": 0.6, "reverse_kl": 1.2},
    6: {"modes": 6, "hq_fraction": 0.7, "reverse_kl": 0.9},
  },
  1: {
    2: {"modes": 2, "hq_fraction": 0.4, "reverse_kl": 1.5},
    4: {"modes": 7, "hq_fraction": 0.8, "reverse_kl": 0.5},
    6: {"modes": 6, "hq_fraction": 0.65, "reverse_kl": 0.8},
  },
  2: {
    2: {"modes": 4, "hq_fraction": 0.3, "reverse_kl": 1.9},
    4: {"modes": 6, "hq_fraction": 0.75, "reverse_kl": 0.7},
    6: {"modes": 8, "hq_fraction": 0.6, "reverse_kl": 1.1},
  },
}
GAN_WALL = {0: 100.0, 1: 110.0, 2: 130.0}
PACGAN = {
  2: {"modes": 7, "hq_fraction": 0.2, "reverse_kl": 0.3},
  4: {"modes": 8, "hq_fraction": 0.5, "reverse_kl": 0.2},
  6: {"modes": 8, "hq_fraction": 0.55, "reverse_kl": 0.25},
}
# Image evaluations (eval/step_N.json and metrics.jsonl); seed 2's final evaluation has no kid.
IMAGE = {
  s: {
    step: {"fid": 100.0 / step + s, "kid": 0.05 / step + 0.001 * s, "kid_std": 0.001}
    for step in (2, 4, 6)
  }
  for s in range(3)
}
del IMAGE[2][6]["kid"]
IMAGE_PROTOCOL = {  # The entries of evaluate_generator's protocol that a results table reads.
  "extractor": "inception",
  "weights": "pt_inception-2015-12-05-6726825d.pth",
  "resize": 299,
  "num_real": 10000,
  "num_generated": 2500,
  "reference": {"dataset": "mnist", "split": "train", "resolution": 28},
  "generator": "ema",
}


class _Writer:
  def write_scalars(self, step, scalars):
    del step, scalars


def _fake_run(workdir, config, evals, *, image=False):
  """A run workdir as a training writes it, without training: loop.run with a no-op step."""
  os.makedirs(workdir)
  loop.write_config(config, workdir)

  def evaluate(step, state):
    del state
    values = dict(evals.get(step, {}))
    if image:  # What ganjax.evaluation.make_evaluator does.
      result = {"values": values, "protocol": {**IMAGE_PROTOCOL, "step": step}, "details": {}}
      evaluation.save_evaluation(workdir, step, result, log=False)
    return values

  loop.run(
    config,
    workdir,
    state=0,
    start_step=0,
    step_fn=lambda state, batch: (state + 1, {"g_loss": np.float32(0.69)}),
    batches=itertools.repeat({}),
    writer=_Writer(),
    examples_per_step=1,
    save_checkpoint=lambda step, state: None,
    evaluate=evaluate,
  )


def _config(name, arg, seed):
  config = load_config(name, arg)
  config.num_train_steps = STEPS
  config.eval_every_steps = EVERY
  config.log_every_steps = 1
  config.seed = seed
  return config


def _marker(workdir, **fields):
  """RUN_WORKDIR/sweep_run.json as the sweep runner writes it (contract of issue 15)."""
  loop.write_json(os.path.join(workdir, results.RUN_FILE), fields)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
  """A sweep of 3 groups: gan (3 finished seeds), pacgan2 (1 finished, 1 failed, 1 running,
  1 pending), dcgan (3 finished image runs, seed 2 without a final kid). Returns its workdir
  and what collect returned."""
  root = str(tmp_path_factory.mktemp("sweep"))
  runs = []

  def add(group, seed, config, overrides=None):
    name = f"{group},seed={seed}"
    runs.append({"name": name, "group": group, "config": config, "overrides": overrides or {}})
    return os.path.join(root, results.RUNS_DIR, name)

  for seed, evals in GAN.items():
    workdir = add("method=gan", seed, "configs/gaussian_mixture.py:method=gan")
    _fake_run(workdir, _config("gaussian_mixture", "runlocal", seed), evals)
    _marker(workdir, state="finished", wall_s=GAN_WALL[seed], job_id=f"7_{seed}")
  for seed in range(4):
    workdir = add("method=pacgan2", seed, "configs/gaussian_mixture.py:method=pacgan2")
    config = _config("gaussian_mixture", "method=pacgan2,runlocal", seed)
    if seed == 0:
      _fake_run(workdir, config, PACGAN)
      _marker(workdir, state="finished", wall_s=50.0, job_id="8_0")
    elif seed == 1:  # Evaluated at step 2, then failed.
      _fake_run(workdir, config, {2: {"modes": 0, "hq_fraction": 0.0, "reverse_kl": 9.0}})
      error = "Traceback (most recent call last):\n  ...\nNonFiniteLossError: step 3 is NaN"
      _marker(workdir, state="failed", wall_s=5.0, job_id="8_1", error=error)
    elif seed == 2:
      os.makedirs(workdir)
      _marker(workdir, state="running", job_id="8_2")
    # seed 3: never submitted, no workdir.
  for seed, evals in IMAGE.items():
    workdir = add("model=dcgan", seed, "configs/dcgan.py")
    _fake_run(workdir, _config("dcgan", "runlocal", seed), evals, image=True)
    _marker(workdir, state="finished", wall_s=300.0 + seed, job_id=f"9_{seed}")
  sweep_file = {"sweep": "experiments/fake/sweep.py", "runs": runs}
  loop.write_json(os.path.join(root, results.SWEEP_FILE), sweep_file)
  return root, results.collect(root)


def _group(result, name):
  return next(g for g in result["groups"] if g["name"] == name)


def _md(root):
  with open(os.path.join(root, results.RESULTS_MD)) as f:
    return f.read()


def _row(md, group, table):
  """The cells of ``group``'s row in the table under the heading that starts with ``table``."""
  section = md.split(f"## {table}", 1)[1].split("\n## ", 1)[0]
  line = next(line for line in section.splitlines() if line.startswith(f"| {group} |"))
  return [c.strip() for c in line.strip("|").split("|")]


def test_results_json_is_what_collect_returned(sweep):
  root, result = sweep
  with open(os.path.join(root, results.RESULTS_JSON)) as f:
    assert json.load(f) == result
  assert result["sweep"] == "experiments/fake/sweep.py"
  assert result["counts"] == {
    "runs": 10,
    "states": {"finished": 7, "failed": 1, "running": 1, "new": 1},
  }
  # Training scalars of metrics.jsonl are not evaluation metrics.
  assert list(result["metrics"]) == ["modes", "hq_fraction", "reverse_kl", "fid", "kid", "kid_std"]


def test_final_mean_and_sample_std_over_seeds(sweep):
  root, result = sweep
  gan = _group(result, "method=gan")
  assert gan["num_seeds"] == 3 and gan["final_steps"] == [STEPS]
  for metric in ("modes", "hq_fraction", "reverse_kl"):
    values = [GAN[s][STEPS][metric] for s in range(3)]
    cell = gan["final"][metric]
    assert cell["n"] == 3
    assert cell["mean"] == pytest.approx(np.mean(values), rel=1e-12)
    assert cell["std"] == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    assert cell["std"] == pytest.approx(statistics.stdev(values), rel=1e-12)
  walls = list(GAN_WALL.values())
  assert gan["wall_s"]["mean"] == pytest.approx(np.mean(walls))
  assert gan["wall_s"]["std"] == pytest.approx(np.std(walls, ddof=1))
  # hq_fraction 0.65 ± 0.05: two significant digits of the std.
  assert _row(_md(root), "method=gan", "Final") == [
    "method=gan",
    "3",
    "6",
    "6.7 ± 1.2",
    "0.650 ± 0.050",
    "0.93 ± 0.15",
    "—",
    "—",
    f"113 ± {np.std(walls, ddof=1):.0f}",
  ]
  assert "sample standard deviation (ddof=1)" in _md(root)


def test_best_mean_over_training_and_its_step(sweep):
  _, result = sweep
  best = _group(result, "method=gan")["best"]
  # reverse_kl: step 2 has an inf (seed 0), so it cannot win; step 4's mean 0.8 beats step 6's.
  assert best["reverse_kl"]["step"] == 4
  assert best["reverse_kl"]["mean"] == pytest.approx(np.mean([1.2, 0.5, 0.7]))
  assert best["reverse_kl"]["std"] == pytest.approx(np.std([1.2, 0.5, 0.7], ddof=1))
  assert best["hq_fraction"]["step"] == 4  # Higher is better: 0.717 at step 4.
  assert best["hq_fraction"]["mean"] == pytest.approx(np.mean([0.6, 0.8, 0.75]))
  assert best["modes"]["step"] == 6
  # Each run's own best, finite values only.
  assert best["reverse_kl"]["per_run"]["method=gan,seed=0"] == {"value": 0.9, "step": 6}
  assert best["reverse_kl"]["per_run"]["method=gan,seed=1"] == {"value": 0.5, "step": 4}
  image = _group(result, "model=dcgan")["best"]
  assert image["fid"]["step"] == 6  # fid = 100 / step + seed: lower is better.
  assert image["fid"]["mean"] == pytest.approx(100 / 6 + 1)
  assert image["kid_std"] is None  # The spread of an estimate ranks nothing.


def test_missing_evaluations_are_missing_not_zero(sweep):
  root, result = sweep
  gan, image = _group(result, "method=gan"), _group(result, "model=dcgan")
  assert gan["final"]["fid"] == {
    "mean": None,
    "std": None,
    "n": 0,
    "values": dict.fromkeys(gan["runs"]),
  }
  assert gan["best"]["fid"] is None
  kid = image["final"]["kid"]
  assert kid["values"]["model=dcgan,seed=2"] is None and kid["n"] == 2
  assert kid["mean"] == pytest.approx(np.mean([IMAGE[s][6]["kid"] for s in (0, 1)]))
  run = next(r for r in result["runs"] if r["name"] == "model=dcgan,seed=2")
  assert run["final"]["kid"] is None and run["final"]["modes"] is None
  md = _md(root)
  image_row = _row(md, "model=dcgan", "Final")
  assert image_row[3:6] == ["—", "—", "—"]  # No mode metrics for the image runs.
  assert image_row[7].endswith("(n=2)")  # Only 2 of the 3 seeds have a final kid.
  assert "kid_std" not in md.split("## Evaluation protocol")[1]  # A column of results.json only.


def test_failed_and_unfinished_runs_are_listed_not_averaged(sweep):
  root, result = sweep
  pacgan = _group(result, "method=pacgan2")
  assert pacgan["num_seeds"] == 1 and pacgan["num_runs"] == 4
  assert pacgan["final"]["reverse_kl"]["values"] == {"method=pacgan2,seed=0": 0.25}
  assert pacgan["best"]["reverse_kl"] == {
    "step": 4,
    "mean": 0.2,
    "std": None,
    "n": 1,
    "per_run": {"method=pacgan2,seed=0": {"value": 0.2, "step": 4}},
  }
  md = _md(root)
  listed = md.split("## Runs not in the tables (3)")[1].split("\n## ")[0]
  assert "- `method=pacgan2,seed=1`: failed (job 8_1): NonFiniteLossError: step 3 is NaN" in listed
  assert "- `method=pacgan2,seed=2`: running (job 8_2)" in listed
  assert "- `method=pacgan2,seed=3`: new" in listed  # Never submitted.
  assert "seed=0`" not in listed


def test_one_seed_is_stated_as_such_without_a_spread(sweep):
  root, result = sweep
  cell = _group(result, "method=pacgan2")["final"]["hq_fraction"]
  assert cell == {"mean": 0.55, "std": None, "n": 1, "values": {"method=pacgan2,seed=0": 0.55}}
  row = _row(_md(root), "method=pacgan2", "Final")
  assert row[:6] == ["method=pacgan2", "1/4", "6", "8.0 (n=1)", "0.550 (n=1)", "0.25 (n=1)"]
  assert row[-1] == "50 (n=1)"
  assert not any("±" in c for c in row)
  assert _row(_md(root), "method=pacgan2", "Best")[3] == "0.20 (n=1) @ 4"


def test_protocol_of_each_metric_from_the_runs(sweep):
  root, result = sweep
  assert result["metrics"]["modes"]["direction"] == "higher"
  assert result["metrics"]["reverse_kl"]["direction"] == "lower"
  assert result["metrics"]["fid"]["direction"] == "lower"
  assert result["metrics"]["modes"]["protocol"] == [
    f"2500 samples of the EMA generator on fixed latents, ring mixture; every {EVERY} steps and "
    "at the end"
  ]
  (fid,) = result["metrics"]["fid"]["protocol"]
  assert "2500 samples of the EMA generator against 10000 real (mnist train, 28)" in fid
  assert "inception features (pt_inception-2015-12-05-6726825d.pth, resize 299)" in fid
  md = _md(root)
  protocol = md.split("## Evaluation protocol")[1].split("## Final")[0]
  assert protocol.index("**modes**, higher is better") < protocol.index("**fid**")
  assert "Fréchet distance" in protocol.split("**fid**")[1].split("**kid**")[0]


def test_a_png_per_metric_with_a_visible_curve(sweep):
  root, result = sweep
  metrics = ["modes", "hq_fraction", "reverse_kl", "fid", "kid"]
  assert result["figures"] == {m: os.path.join("curves", f"{m}.png") for m in metrics}
  for metric in metrics:
    path = os.path.join(root, result["figures"][metric])
    with Image.open(path) as image:
      image.verify()
    with Image.open(path) as image:
      width, height = image.size
      pixels = np.asarray(image.convert("RGB"), dtype=np.int32)
    assert 600 <= width <= 3000 and 400 <= height <= 2000, (metric, image.size)
    not_white = np.any(pixels < 235, axis=-1).mean()
    assert 0.02 < not_white < 0.6, (metric, not_white)  # Lines, labels, bands; not blank.
    colors = pixels[..., 0] << 16 | pixels[..., 1] << 8 | pixels[..., 2]
    assert len(np.unique(colors)) > 50
    assert f"![{metric}](curves/{metric}.png)" in _md(root)
  curve = _group(result, "method=gan")["curves"]["reverse_kl"]
  assert curve["steps"] == [2, 4, 6] and curve["n"] == [2, 3, 3]  # seed 0's inf is left out.
  assert curve["min"][0] == 1.5 and curve["max"][0] == 1.9


def test_without_sweep_json_runs_are_grouped_by_name(tmp_path):
  root = str(tmp_path)
  values = {"lr=0.1,seed=0": 0.4, "lr=0.1,seed=1": 0.6, "lr=0.2,seed=0": 0.9, "lr=0.2,seed=1": None}
  for name, hq in values.items():
    evals = {} if hq is None else {STEPS: {"modes": 1, "hq_fraction": hq, "reverse_kl": 0.1}}
    _fake_run(os.path.join(root, "runs", name), _config("gaussian_mixture", "runlocal", 0), evals)
  result = results.collect(root)
  assert [g["name"] for g in result["groups"]] == ["lr=0.1", "lr=0.2"]
  assert [g["num_seeds"] for g in result["groups"]] == [2, 2]  # Logged their last step.
  lr01, lr02 = result["groups"]
  assert lr01["final"]["hq_fraction"]["mean"] == pytest.approx(0.5)
  assert lr02["final"]["hq_fraction"]["n"] == 1
  assert lr02["final"]["hq_fraction"]["values"]["lr=0.2,seed=1"] is None
  assert lr01["wall_s"] == {"mean": None, "std": None, "n": 0}


def test_many_groups_are_drawn_in_panels(tmp_path):
  names = [f"dataset={d},method=m{i}" for d in ("ring", "grid") for i in range(8)]
  assert results.panels(names) == [
    ("dataset=ring", list(range(8))),
    ("dataset=grid", list(range(8, 16))),
  ]
  assert results.panels([f"lr={i}" for i in range(10)]) == [
    ("groups 1-8", list(range(8))),
    ("groups 9-10", [8, 9]),
  ]
  rng = np.random.default_rng(0)
  groups = []
  for name in names:
    mean = np.cumsum(rng.uniform(0, 1, 10))
    curve = {"steps": list(range(100, 1100, 100)), "mean": list(mean), "n": [3] * 10}
    curve.update(min=list(mean - 0.5), max=list(mean + 0.5))
    groups.append({"name": name, "num_seeds": 3, "curves": {"modes": curve}})
  path = str(tmp_path / "modes.png")
  assert results.plot_curve("modes", groups, path)
  with Image.open(path) as image:
    width, height = image.size
  assert height > 900 and width > 1000  # Two panels of 8 groups, the legends beside them.


def test_a_non_finite_value_is_shown_not_averaged_away():
  stats = results.mean_std([INF, 1.0, None, 2.0])
  assert stats == {"mean": INF, "std": None, "n": 3, "non_finite": 1}
  assert results.format_stats(stats, 4) == "inf (1 of 3 non-finite) (n=3)"
  assert results.mean_std([]) == {"mean": None, "std": None, "n": 0}
  assert results.format_stats(results.mean_std([None])) == "—"
