"""Data parallelism over a device mesh with one ``data`` axis.

Two modes run the same pure step (``config.parallel.mode``):

* ``"global"`` (default): a global-view ``jax.jit``. The batch is sharded on its leading axis, the
  state replicated, and XLA inserts the cross-device reductions. BatchNorm sees the global batch.
* ``"shard_map"``: the step runs per device inside ``jax.shard_map`` with explicit ``lax.pmean`` of
  gradients, metrics and BatchNorm running averages — the ``jax.pmap`` programming model, with
  per-device BatchNorm batch statistics.

Multi-host: :func:`initialize_distributed` calls ``jax.distributed.initialize()``; each host feeds
its own slice of the global batch and :func:`host_batch_to_global` assembles the global array.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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


def compile_step(
  step_fn: Callable[..., tuple[Any, Any]], mesh: Mesh, mode: str = "global"
) -> Callable[[Any, Any, jax.Array], tuple[Any, Any]]:
  """jit-compiles ``step_fn(state, batch, rng, axis_name=...) -> (state, metrics)`` for a mode.

  The state argument is donated: its buffers are reused for the new state.
  """
  if mode not in MODES:
    raise ConfigError(f"Unknown parallel.mode {mode!r}; valid choices: {', '.join(MODES)}.")
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
