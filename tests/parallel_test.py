"""Data parallelism on 8 simulated CPU devices equals one device (tests/conftest.py sets them)."""

import functools

import jax
import numpy as np
import optax
import pytest
import tolerances

from ganjax import losses, parallel, steps
from ganjax.models import dcgan, mlp
from ganjax.state import create_gan_state

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")


def _run(mode, num_devices, generator, discriminator, shape, latent, images, n_steps=2):
  mesh = parallel.make_mesh(num_devices)
  init = functools.partial(
    create_gan_state,
    generator=generator,
    discriminator=discriminator,
    latent_dim=latent,
    element_shape=shape,
    # SGD: equal gradients give equal params (Adam would amplify float rounding in tiny grads).
    generator_optimizer=optax.sgd(0.1),
    discriminator_optimizer=optax.sgd(0.1),
  )
  state = jax.jit(init, out_shardings=parallel.replicated(mesh))(jax.random.key(0))
  initial = jax.device_get(state)  # The step donates its input state.
  step = parallel.compile_step(
    functools.partial(
      steps.train_step, objective=losses.non_saturating, latent_dim=latent, ema_decay=0.9
    ),
    mesh,
    mode,
  )
  batch = parallel.host_batch_to_global({"image": images}, mesh)
  for _ in range(n_steps):
    state, metrics = step(state, batch, jax.random.key(1))
  return initial, jax.device_get(state), jax.device_get(metrics)


def _assert_runs_close(one, other, reduction, n_steps=2):
  """Two runs (initial state, state, metrics) that split the batch's reductions differently: equal
  up to float32 round-off of ``n_steps`` gradients, each behind G's and D's forward and backward
  passes and the ``reduction`` over the batch (SGD: a gradient's round-off moves its parameter by
  lr times as much; the EMA and BatchNorm's running averages are linear in what they add)."""
  (initial, state, metrics), (_, other_state, other_metrics) = one, other
  params = {"g": state.generator.params, "d": state.discriminator.params}
  length = tolerances.gradient_length(params, reduction)
  tolerances.assert_bitwise_equal(other_state.step, state.step)
  for name in ("generator", "discriminator"):
    tolerances.assert_bitwise_equal(getattr(other_state, name).step, getattr(state, name).step)
    for field in ("params", "batch_stats", "opt_state"):
      tolerances.assert_updates_close(
        getattr(getattr(other_state, name), field),
        getattr(getattr(state, name), field),
        getattr(getattr(initial, name), field),
        steps=n_steps,
        length=length,
        err_msg=f"{name}.{field}",
      )
  tolerances.assert_updates_close(
    other_state.ema_params, state.ema_params, initial.ema_params, steps=n_steps, length=length
  )
  # The metrics of the last step: the losses and D's outputs are O(1) functions of D's logits (the
  # largest sets their scale); a gradient norm also sums the squares of every gradient entry.
  num_params = sum(x.size for x in jax.tree.leaves(params))
  scale = max(abs(float(v)) for k, v in metrics.items() if not k.endswith("grad_norm"))
  for key, value in metrics.items():
    if key.endswith("grad_norm"):
      tolerances.assert_float32_close(
        other_metrics[key], value, length=n_steps * length + num_params, err_msg=key
      )
    else:
      tolerances.assert_float32_close(
        other_metrics[key], value, length=n_steps * length, magnitude=scale, err_msg=key
      )


def _mlp_with_batchnorm(shape):
  return (
    mlp.Generator(image_shape=shape, hidden=(32, 32), batch_norm=True),
    mlp.Discriminator(hidden=(32, 16), dropout=0.2),
  )


def test_global_mode_on_8_devices_equals_1_device_with_batchnorm_and_dropout():
  shape = (28, 28, 1)
  images = np.random.RandomState(0).uniform(-1, 1, (16, *shape)).astype(np.float32)
  nets = _mlp_with_batchnorm(shape)
  one = _run("global", 1, *nets, shape, 8, images)
  eight = _run("global", 8, *nets, shape, 8, images)
  _assert_runs_close(one, eight, len(images))


@pytest.mark.slow
def test_global_mode_on_8_devices_equals_1_device_dcgan():
  shape = (32, 32, 3)
  images = np.random.RandomState(0).uniform(-1, 1, (16, *shape)).astype(np.float32)
  nets = (dcgan.Generator(image_shape=shape, width=4), dcgan.Discriminator(width=4))
  one = _run("global", 1, *nets, shape, 8, images)
  eight = _run("global", 8, *nets, shape, 8, images)
  # Convolution kernels and BatchNorm sum over the batch and every pixel.
  _assert_runs_close(one, eight, len(images) * shape[0] * shape[1])


def test_shard_map_mode_equals_1_device_without_batchnorm():
  shape = (28, 28, 1)
  images = np.random.RandomState(0).uniform(-1, 1, (16, *shape)).astype(np.float32)
  nets = (
    mlp.Generator(image_shape=shape, hidden=(32, 32), batch_norm=False),
    mlp.Discriminator(hidden=(32, 16), dropout=0.0),
  )
  one = _run("global", 1, *nets, shape, 8, images)
  per_device = _run("shard_map", 8, *nets, shape, 8, images)
  _assert_runs_close(one, per_device, len(images))


def test_shard_map_mode_with_batchnorm_keeps_state_replicated_and_finite():
  shape = (28, 28, 1)
  images = np.random.RandomState(0).uniform(-1, 1, (16, *shape)).astype(np.float32)
  _, state, metrics = _run("shard_map", 8, *_mlp_with_batchnorm(shape), shape, 8, images)
  # Per-device BatchNorm: the running statistics are averaged, so they stay identical everywhere.
  assert all(np.isfinite(v) for v in metrics.values())
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state))
  assert jax.tree.leaves(state.generator.batch_stats)


def test_batch_size_must_divide_by_devices():
  with pytest.raises(ValueError, match="batch_size=12 does not divide by the number of devices"):
    parallel.check_batch_size(12, parallel.make_mesh(8))
  parallel.check_batch_size(16, parallel.make_mesh(8))


def test_unknown_mode_lists_choices():
  with pytest.raises(ValueError, match="global, shard_map"):
    parallel.compile_step(lambda *a, **k: None, parallel.make_mesh(1), "pmap")


def test_batched_apply_pads_shards_and_unpads():
  """13 rows in batches of 5: 5 + 5 + 3 padded on one device, 8 + 5 padded on 8 (5 rounds up to
  8); every call sees a full batch, the padding is dropped, and the outputs equal one device's."""
  rng = np.random.default_rng(0)
  weights = rng.normal(size=(6, 4)).astype(np.float32)
  x = rng.normal(size=(13, 6)).astype(np.float32)
  labels = np.arange(13, dtype=np.int32)
  seen = []

  @jax.jit
  def fn(w, x, labels, nothing):
    seen.append(x.shape[0])  # At trace time: one entry per compilation.
    assert nothing is None
    return {"y": x @ w, "labels": labels}

  outputs, sizes = {}, {}
  for num_devices in (1, 8):
    mesh = parallel.make_mesh(num_devices)
    parts = list(
      parallel.batched_outputs(fn, (weights,), (x, labels, None), batch_size=5, mesh=mesh)
    )
    sizes[num_devices] = [len(p["labels"]) for p in parts]
    outputs[num_devices] = parallel.batched_apply(
      fn, (weights,), (x, labels, None), batch_size=5, mesh=mesh
    )
  assert sizes == {1: [5, 5, 3], 8: [8, 5]} and seen == [5, 8]
  for out in outputs.values():
    np.testing.assert_array_equal(out["labels"], labels)
  # Other batch sizes per device: other kernels, round-off of 6-term dot products.
  tolerances.assert_float32_close(outputs[8]["y"], x @ weights, length=6)
  tolerances.assert_float32_close(outputs[8]["y"], outputs[1]["y"], length=6)
  empty = parallel.batched_apply(fn, (weights,), (x[:0], labels[:0], None), batch_size=5)
  assert empty["y"].shape == (0, 4) and empty["labels"].dtype == np.int32
  with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
    parallel.batched_apply(fn, (weights,), (x, labels, None), batch_size=0)
  with pytest.raises(ValueError, match=r"different lengths: \[12, 13\]"):
    parallel.batched_apply(fn, (weights,), (x[:12], labels, None), batch_size=5)
