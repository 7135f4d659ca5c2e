"""Data parallelism over a device mesh with one ``data`` axis.

Two modes run the same pure step (``config.parallel.mode``):

* ``"global"`` (default): a global-view ``jax.jit``. The batch is sharded on its leading axis, the
  state replicated, and XLA inserts the cross-device reductions. BatchNorm sees the global batch.
* ``"shard_map"``: the step runs per device inside ``jax.shard_map`` with explicit ``lax.pmean`` of
  gradients, metrics and BatchNorm running averages — the ``jax.pmap`` programming model, with
  per-device BatchNorm batch statistics.

Multi-host: :func:`initialize_distributed` joins the processes of a run (coordinator and ranks from
the flags, jax's cluster detection or submitit's job environment); each host feeds its own slice of
the global batch and :func:`host_batch_to_global` assembles the global array. On CPUs the processes
exchange data with gloo, jax's default CPU collectives. Every process opens the run's workdir (a
file system they all see): all take part in checkpoint saves, process 0 writes the rest.

Inference (generation, feature extraction): :func:`batched_outputs` / :func:`batched_apply` run a
function over any number of rows in fixed-size batches sharded over the mesh.
"""

from __future__ import annotations

import math
import os
import zlib
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


# The layout this process joined (initialize_distributed).
_JOINED: dict[str, Any] = {}
# Ports derived from a job id lie in [61440, 65535], above Linux's ephemeral range (as jax's own).
_PORT_BASE, _PORT_RANGE = 65536 - 4096, 4096


def initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> dict[str, Any]:
  """Joins the processes of a multi-process run (``jax.distributed.initialize``); returns the
  layout (``coordinator_address``, ``num_processes``, ``process_id``, ``source``).

  Each value comes from the first of: the arguments (the flags ``--coordinator_address``,
  ``--num_processes``, ``--process_id`` of :mod:`ganjax.main`); jax's own cluster detection
  (inside a Slurm ``srun`` step: ``SLURM_STEP_NODELIST``, ``SLURM_NTASKS``, ``SLURM_PROCID``; Open
  MPI; Cloud TPU); submitit's job environment (a task of a local or Slurm submitit job: its rank,
  the task count, and its first host with a port derived from the job id, or
  ``JAX_COORDINATOR_PORT``); ``JAX_COORDINATOR_ADDRESS``. Called again in a process that already
  joined, it checks the layout and returns it.

  Raises:
    ConfigError: a value is missing (the message names the flags), invalid, or differs from the
      run this process already joined.
  """
  layout = _check_layout(coordinator_address, num_processes, process_id)
  if jax.distributed.is_initialized():
    return _check_joined(layout)
  source = "flags"
  if None in layout.values():
    cluster = _jax_cluster()
    found = None if cluster is not None else submitit_layout()
    if cluster is not None:
      source = f"jax's {cluster} detection"  # jax.distributed.initialize fills in the rest.
    elif found is not None:
      layout = {k: found[k] if v is None else v for k, v in layout.items()}
      source = f"submitit {found['executor']} job {found['job_id']}"
    else:
      if layout["coordinator_address"] is None:
        layout["coordinator_address"] = os.environ.get("JAX_COORDINATOR_ADDRESS") or None
      missing = [name for name, value in layout.items() if value is None]
      if missing:
        raise ConfigError(
          f"A multi-process run (config.parallel.distributed) needs {', '.join(missing)}, and "
          "no Slurm step or submitit job says them: pass --coordinator_address=HOST:PORT "
          "--num_processes=N --process_id=I to every process (I = 0..N-1; process 0 serves "
          "HOST:PORT), or set config.parallel.coordinator_address, num_processes and "
          "process_id."
        )
  jax.distributed.initialize(**layout)
  _JOINED.update(
    coordinator_address=layout["coordinator_address"],  # None: jax's detection found it.
    num_processes=jax.process_count(),
    process_id=jax.process_index(),
    source=source,
  )
  _log_layout(_JOINED)
  return dict(_JOINED)


def _check_layout(coordinator_address, num_processes, process_id) -> dict[str, Any]:
  """The given values, checked (None: not given)."""
  if coordinator_address is not None:
    host, _, port = str(coordinator_address).rpartition(":")
    if not host or not port.isdigit():
      raise ConfigError(
        f"--coordinator_address={coordinator_address!r} must be HOST:PORT (process 0's host "
        "and a free port), e.g. localhost:12345."
      )
  if num_processes is not None and num_processes < 1:
    raise ConfigError(f"--num_processes must be >= 1, got {num_processes}.")
  if process_id is not None and (
    process_id < 0 or (num_processes is not None and process_id >= num_processes)
  ):
    limit = f" and < --num_processes={num_processes}" if num_processes is not None else ""
    raise ConfigError(f"--process_id must be >= 0{limit}, got {process_id}.")
  return {
    "coordinator_address": coordinator_address,
    "num_processes": num_processes,
    "process_id": process_id,
  }


def _check_joined(given: dict[str, Any]) -> dict[str, Any]:
  """The layout of the run this process already joined; a ConfigError when ``given`` differs."""
  joined = {
    "coordinator_address": _JOINED.get("coordinator_address"),
    "num_processes": jax.process_count(),
    "process_id": jax.process_index(),
  }
  different = [
    k for k, v in given.items() if v is not None and joined[k] is not None and v != joined[k]
  ]
  if different:
    raise ConfigError(
      f"This process already joined a multi-process run ({joined}); it cannot join another "
      f"with {', '.join(f'{k}={given[k]!r}' for k in different)}."
    )
  return {**joined, "source": _JOINED.get("source", "jax.distributed.initialize")}


def _jax_cluster() -> str | None:
  """The cluster environment ``jax.distributed.initialize()`` detects by itself (e.g. ``slurm``
  inside an ``srun`` step), or None."""
  try:
    from jax._src import clusters
  except ImportError:  # Moved in a later jax: leave detection to jax.distributed.initialize.
    return None
  for env in getattr(clusters.ClusterEnv, "_cluster_types", ()):
    if getattr(env, "opt_in_only_method", False):
      continue
    try:
      if env.is_env_present():
        return getattr(env, "name", "") or env.__name__
    except Exception:  # A detector that cannot tell (a missing optional module) detects nothing.
      continue
  return None


def submitit_job_environment():
  """submitit's ``JobEnvironment`` of the job this process is a task of (any executor, the
  in-process debug one included), or None outside a submitit job."""
  if not (os.environ.get("SUBMITIT_EXECUTOR") or os.environ.get("SUBMITIT_DEBUG_JOB_ID")):
    return None
  try:
    import submitit

    return submitit.JobEnvironment()
  except (ImportError, RuntimeError):  # No submitit, or no job environment activated.
    return None


def submitit_layout() -> dict[str, Any] | None:
  """The layout of the submitit job this process is a task of (local or Slurm executor), or
  None outside one: coordinator (its first host; ``localhost`` for the local executor) and port
  (``JAX_COORDINATOR_PORT``, else derived from the job id), task count and rank."""
  env = submitit_job_environment() if os.environ.get("SUBMITIT_EXECUTOR") else None
  if env is None:
    return None
  job_id = str(env.job_id)  # "ARRAY_TASK" for a task of a Slurm job array.
  port = os.environ.get("JAX_COORDINATOR_PORT") or str(job_port(str(env.raw_job_id)))
  host = "localhost" if env.cluster in ("local", "debug") else env.hostnames[0]
  return {
    "coordinator_address": f"{host}:{port}",
    "num_processes": int(env.num_tasks),
    "process_id": int(env.global_rank),
    "executor": env.cluster,
    "job_id": job_id,
  }


def job_port(job_id: str) -> int:
  """The port every task of job ``job_id`` derives alike: jax's rule for Slurm job ids (its own
  id for each task of an array), so jobs started one after another get different ports."""
  number = int(job_id) if job_id.isdigit() else zlib.crc32(job_id.encode())
  return _PORT_BASE + number % _PORT_RANGE


def _log_layout(layout: dict[str, Any]) -> None:
  by_process: dict[int, list[int]] = {}
  for device in jax.devices():
    by_process.setdefault(device.process_index, []).append(device.id)
  logging.info(
    "Distributed JAX (%s): process %d of %d, coordinator %s; %d local / %d global %s devices; "
    "devices by process: %s.",
    layout["source"],
    layout["process_id"],
    layout["num_processes"],
    layout["coordinator_address"],
    jax.local_device_count(),
    jax.device_count(),
    jax.default_backend(),
    "; ".join(f"{p}: {ids}" for p, ids in sorted(by_process.items())),
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
  padding is dropped from what is yielded (numpy arrays in the structure of ``fn``'s output; in a
  multi-process run each process passes the same inputs and gets all outputs).
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
  """The first ``size`` rows of ``outputs`` on the host; in a multi-process run, every process
  gets every row (gathered from the devices of the others)."""

  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      from jax.experimental import multihost_utils

      x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)[:size]

  return jax.tree.map(fetch, outputs)
