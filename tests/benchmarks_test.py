"""benchmarks/: the FLOP count, the layer lists against the models, and the scripts' JSON output."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from conftest import REPO_ROOT

BENCHMARKS = os.path.join(REPO_ROOT, "benchmarks")
sys.path.insert(0, BENCHMARKS)

import flops  # noqa: E402
import train_step  # noqa: E402
from workloads import WORKLOADS  # noqa: E402

RESULT_KEYS = {
  "workload",
  "batch",
  "images_per_sec",
  "step_ms_median",
  "step_ms_min",
  "step_ms_max",
  "gflop_per_step",
  "gflop_per_sec",
  "peak_rss_mib",
  "framework",
  "dtype",
}


def test_mlp28_step_flops_closed_form():
  g = [64 * 256, 256 * 512, 512 * 1024, 1024 * 784]  # multiply-adds per example and pass
  d = [784 * 512, 512 * 256, 256 * 128, 128 * 1]
  # D step: G fwd + 2 x D (fwd + dW + dX except the first layer);
  # G step: G (fwd + dW + dX except the first layer) + D (fwd + dX).
  d_step = sum(g) + 2 * (3 * sum(d) - d[0])
  g_step = 3 * sum(g) - g[0] + 2 * sum(d)
  expected = 2 * 64 * (d_step + g_step)
  assert flops.step_flops("mlp28") == expected == 1_229_062_144
  assert sum(r["step_gflop"] for r in flops.breakdown("mlp28")) == pytest.approx(expected / 1e9)


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_layer_lists_match_the_models(workload):
  """flops.py's kernels are those of the ganjax modules the benchmark runs."""
  w = WORKLOADS[workload]
  generator, discriminator = train_step.build_models(workload)
  inputs = {"G": jnp.zeros((2, w.latent)), "D": jnp.zeros((2, *w.image_shape))}
  for net, module in (("G", generator), ("D", discriminator)):
    params = jax.eval_shape(
      lambda m=module, x=inputs[net]: m.init(jax.random.key(0), x, train=False)
    )["params"]
    model_kernels = sorted(
      tuple(leaf.shape)
      for path, leaf in jax.tree_util.tree_leaves_with_path(params)
      if path[-1].key == "kernel"
    )
    listed = sorted(layer.kernel for layer in flops.layers(workload) if layer.net == net)
    assert listed == model_kernels, (workload, net)


def test_scripts_print_json():
  env = dict(os.environ)  # one CPU device; other XLA flags (an ISA cap) stay
  env["XLA_FLAGS"] = " ".join(
    f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f
  )
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        os.path.join(BENCHMARKS, script),
        "--workload",
        "mlp28",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--json",
      ],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=env,
    )
    for script in ("train_step.py", "handwritten_step.py")
  ]
  for p, framework in zip(procs, ("ganjax", "handwritten"), strict=True):
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-2000:]
    r = json.loads(out.strip().splitlines()[-1])
    assert RESULT_KEYS <= set(r)
    assert r["framework"] == framework and r["workload"] == "mlp28" and r["steps"] == 1
    assert r["gflop_per_step"] == pytest.approx(flops.step_flops("mlp28") / 1e9)
    assert r["images_per_sec"] > 0 and r["compile_s"] > 0


def _flax_parameter_count(module, x):
  params = jax.eval_shape(lambda: module.init(jax.random.key(0), x, train=False))["params"]
  return sum(leaf.size for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_torch_networks_mirror_ganjax(workload):
  pytest.importorskip("torch")
  import torch_train_step

  w = WORKLOADS[workload]
  generator, discriminator = train_step.build_models(workload)
  expected = (
    _flax_parameter_count(generator, jnp.zeros((2, w.latent))),
    _flax_parameter_count(discriminator, jnp.zeros((2, *w.image_shape))),
  )
  assert torch_train_step.parameter_counts(workload) == expected


def test_torch_step_runs():
  torch = pytest.importorskip("torch")
  import torch_train_step

  threads = torch.get_num_threads()
  try:
    r = torch_train_step.run("mlp28", num_steps=1, warmup=0, threads=1)
  finally:
    torch.set_num_threads(threads)
  assert RESULT_KEYS <= set(r) and r["framework"] == "torch"
  json.dumps(r)
