"""Data parallelism over a device mesh with one ``data`` axis.

Two modes run the same pure step (``config.parallel.mode``):

* ``"global"`` (default): a global-view ``jax.jit``. The batch is sharded on its leading axis, the
  state replicated, and XLA inserts the cross-device reductions. BatchNorm sees the global batch.
* ``"shard_map"``: the step runs per device inside ``jax.shard_map`` with explicit ``lax.pmean`` of
  gradients, metrics and BatchNorm running averages — the ``jax.pmap`` programming model, with
  per-device BatchNorm batch statistics.

Multi-host: :func:`initialize_distributed` calls ``jax.distributed.initialize()``; each host feeds
its own slice of the global batch and :func:`host_batch_to_global` assembles the global array.

Inference (generation, feature extraction): :func:`batched_outputs` / :func:`batched_apply` run a
function over any number of rows in fixed-size batches sharded over the mesh.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ganjax.errors import ConfigError

DATA_AXIS = "data"
MODES = ("global", "shard_map")


def initialize_distributed() -> None:
  """Joins a multi-host run (coordinator and process ids come from the cluster environment)."""
  jax.distributed.initialize()
  logging.info(
    "Distributed JAX: process %d of %d, %d local / %d global devices.",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def pmean(tree: Any, axis_name: str | None) -> Any:
  """The mean of ``tree`` over the devices of ``axis_name`` inside ``shard_map``; ``tree`` itself
  when ``axis_name`` is None (global mode: XLA already reduced over the whole batch)."""
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def local_normal(rng: jax.Array, shape: tuple[int, ...], axis_name: str | None) -> jax.Array:
  """This device's rows of standard normal draws made for the whole (global) batch.

  ``shape`` is the local shape (``shape[0]`` rows per device); the draws are made for all devices
  with one key and sliced, so a run's noise is the same on any device count. Drawn flat and
  reshaped (the same values for jax's default threefry keys): XLA:CPU compiles 4-d draws slowly.
  """
  if axis_name is None:
    return jax.random.normal(rng, (math.prod(shape),), jnp.float32).reshape(shape)
  num_devices = jax.lax.psum(1, axis_name)
  draws = jax.random.normal(rng, (num_devices * math.prod(shape),), jnp.float32)
  draws = draws.reshape(shape[0] * num_devices, *shape[1:])
  index = jax.lax.axis_index(axis_name)
  return jax.lax.dynamic_slice_in_dim(draws, index * shape[0], shape[0])


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh named ``data`` over the first ``num_devices`` devices (default: all)."""
  available = jax.device_count()
  num_devices = num_devices or available
  if num_devices > available:
    raise ConfigError(f"parallel.num_devices={num_devices} but only {available} devices exist.")
  # Auto axes: the global-view programming model, where XLA's partitioner places the collectives.
  return jax.make_mesh(
    (num_devices,),
    (DATA_AXIS,),
    axis_types=(jax.sharding.AxisType.Auto,),
    devices=jax.devices()[:num_devices],
  )


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  """The global batch must split evenly over the devices and the hosts."""
  devices = mesh.devices.size
  if batch_size % devices:
    raise ConfigError(
      f"batch_size={batch_size} does not divide by the number of devices ({devices}); "
      f"use a multiple of {devices}, e.g. {devices * max(1, round(batch_size / devices))}."
    )
  if batch_size % jax.process_count():
    raise ConfigError(
      f"batch_size={batch_size} does not divide by the number of hosts ({jax.process_count()})."
    )


def host_batch_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each host's slice of the batch into global arrays sharded over ``data``."""
  sharding = batch_sharded(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
  }


def check_mode(mode: str) -> None:
  """Raises a ConfigError naming the valid ``parallel.mode`` values when ``mode`` is not one."""
  if mode not in MODES:
    raise ConfigError(f"Unknown parallel.mode {mode!r}; valid choices: {', '.join(MODES)}.")


def compile_step(
  step_fn: Callable[..., tuple[Any, Any]], mesh: Mesh, mode: str = "global"
) -> Callable[[Any, Any, jax.Array], tuple[Any, Any]]:
  """jit-compiles ``step_fn(state, batch, rng, axis_name=...) -> (state, metrics)`` for a mode.

  The state argument is donated: its buffers are reused for the new state.
  """
  check_mode(mode)
  repl, sharded = replicated(mesh), batch_sharded(mesh)
  if mode == "global":
    return jax.jit(
      lambda state, batch, rng: step_fn(state, batch, rng, axis_name=None),
      in_shardings=(repl, sharded, repl),
      out_shardings=(repl, repl),
      donate_argnums=0,
    )
  per_device = jax.shard_map(
    lambda state, batch, rng: step_fn(state, batch, rng, axis_name=DATA_AXIS),
    mesh=mesh,
    in_specs=(P(), P(DATA_AXIS), P()),
    out_specs=(P(), P()),
    # pmap semantics: gradients of replicated params stay per-device until the explicit pmean
    # (with vma checking on, their transpose would already sum them over devices).
    check_vma=False,
  )
  return jax.jit(
    per_device,
    in_shardings=(repl, sharded, repl),
    out_shardings=(repl, repl),
    donate_argnums=0,
  )


def batched_outputs(
  fn: Callable[..., Any],
  constants: tuple[Any, ...],
  inputs: tuple[Any, ...],
  *,
  batch_size: int,
  mesh: Mesh | None = None,
) -> Iterator[Any]:
  """Yields ``fn(*constants, *batch)`` on the host for consecutive batches of ``inputs``.

  Batched, sharded inference (generation, the domain classifier, Inception): ``constants`` (the
  weights) are replicated on ``mesh`` (default: all devices) once, and every batch is sharded on
  its leading axis over the ``data`` axis. ``batch_size`` is rounded up to a multiple of the
  devices and the last batch is padded with zeros, so one compilation serves every batch; the
  padding is dropped from what is yielded (numpy arrays in the structure of ``fn``'s output).
  ``inputs`` share their leading length; a None input is passed through as None. The next batch
  is dispatched before the previous one is fetched.
  """
  if batch_size < 1:
    raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
  inputs = [None if x is None else np.asarray(x) for x in inputs]
  lengths = {len(x) for x in inputs if x is not None}
  if len(lengths) > 1:
    raise ValueError(f"The inputs have different lengths: {sorted(lengths)}.")
  num = lengths.pop() if lengths else 0
  mesh = make_mesh() if mesh is None else mesh
  batch_size = -(-batch_size // mesh.devices.size) * mesh.devices.size
  constants = jax.device_put(constants, replicated(mesh))  # A no-op when already there.
  sharding = batch_sharded(mesh)
  pending = None
  for start in range(0, num, batch_size):
    batch = [
      None if x is None else _padded(x[start : start + batch_size], batch_size) for x in inputs
    ]
    outputs = fn(*constants, *jax.device_put(batch, sharding))  # Dispatched asynchronously...
    if pending is not None:  # ... while the previous batch's outputs are fetched.
      yield _fetched(*pending)
    pending = (outputs, min(batch_size, num - start))
  if pending is not None:
    yield _fetched(*pending)


def batched_apply(
  fn: Callable[..., Any],
  constants: tuple[Any, ...],
  inputs: tuple[Any, ...],
  *,
  batch_size: int,
  mesh: Mesh | None = None,
) -> Any:
  """All outputs of :func:`batched_outputs`, concatenated: ``fn`` applied to every input row.

  No rows give empty arrays of ``fn``'s output shapes (traced on one row, not run).
  """
  parts = list(batched_outputs(fn, constants, inputs, batch_size=batch_size, mesh=mesh))
  if parts:
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)
  rows = [
    None if x is None else np.zeros((1, *np.shape(x)[1:]), np.asarray(x).dtype) for x in inputs
  ]
  shapes = jax.eval_shape(fn, *constants, *rows)
  return jax.tree.map(lambda s: np.zeros((0, *s.shape[1:]), s.dtype), shapes)


def _padded(rows: np.ndarray, size: int) -> np.ndarray:
  if len(rows) == size:
    return rows
  return np.concatenate([rows, np.zeros((size - len(rows), *rows.shape[1:]), rows.dtype)])


def _fetched(outputs: Any, size: int) -> Any:
  return jax.tree.map(lambda x: np.asarray(x)[:size], outputs)
