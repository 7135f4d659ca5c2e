r"""Times ganjax's own jit-compiled ``train_step`` on fixed workloads (random data, no pipeline).

  python benchmarks/train_step.py --workload dcgan28 --steps 20 --warmup 3 [--json]
      [--dtype bfloat16] [--conv_impl subpixel]

Workloads (benchmarks/workloads.py; fixed, so numbers compare across time):
  mlp28    the vanilla MLP GAN (configs/vanilla_gan.py), batch 64, z 64
  dcgan28  the 28x28 DCGAN (TF tutorial layout, w = 64), batch 128, z 100
  dcgan64  the 64x64 Radford DCGAN (ngf = ndf = 64), batch 64, z 100
One step = one D update on a real and a fake batch + one G update, BCE on logits, Adam(2e-4, 0.5).
The timed function is ``ganjax.steps.train_step`` compiled by ``ganjax.parallel.compile_step`` on a
one-device mesh; compilation is timed separately. GFLOP/s use benchmarks/flops.py's count.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import time

import harness
import jax
import numpy as np
import optax
from workloads import WORKLOADS

from ganjax import losses, parallel, steps
from ganjax.models import dcgan, layers, mlp
from ganjax.state import create_gan_state


def _dtype_field(cls, dtype: str) -> dict:
  """``{"dtype": dtype}`` for a model class, or {} for float32 when the class has no such field."""
  if "dtype" in {f.name for f in dataclasses.fields(cls)}:
    return {"dtype": dtype}
  if dtype == "float32":
    return {}
  raise SystemExit(
    f"{cls.__module__}.{cls.__qualname__} has no `dtype` field: --dtype {dtype} needs a ganjax "
    "whose models take one."
  )


def build_models(workload: str, dtype: str = "float32", conv_impl: str | None = None):
  """The workload's ganjax ``(generator, discriminator)`` modules.

  ``conv_impl`` (DCGAN only) is passed to both models; None keeps the models' default.
  """
  w = WORKLOADS[workload]
  if w.family == "mlp":
    return (
      mlp.Generator(image_shape=w.image_shape, **_dtype_field(mlp.Generator, dtype)),
      mlp.Discriminator(**_dtype_field(mlp.Discriminator, dtype)),
    )
  impl = {} if conv_impl is None else {"conv_impl": conv_impl}
  return (
    dcgan.Generator(
      image_shape=w.image_shape,
      width=w.width,
      **impl,
      **_dtype_field(dcgan.Generator, dtype),
    ),
    dcgan.Discriminator(width=w.width, **impl, **_dtype_field(dcgan.Discriminator, dtype)),
  )


def conv_impl_used(workload: str, conv_impl: str | None) -> str | None:
  """The convolution implementation a DCGAN workload runs (``"auto"`` resolved); None for MLPs."""
  if WORKLOADS[workload].family != "dcgan":
    return None
  return layers.resolve_conv_impl(conv_impl or dcgan.Generator.conv_impl)


def jax_info() -> dict:
  """Versions and the backend, for the result record."""
  return {
    "backend": jax.default_backend(),
    "device": str(jax.devices()[0].device_kind),
    "jax": jax.__version__,
    "jaxlib": importlib.metadata.version("jaxlib"),
    "flax": importlib.metadata.version("flax"),
  }


def add_jax_arguments(p) -> None:
  p.add_argument(
    "--conv_impl",
    choices=layers.CONV_IMPLS,
    default=None,
    help="DCGAN convolution implementation (default: the models' default)",
  )


def random_images(workload: str) -> np.ndarray:
  w = WORKLOADS[workload]
  rng = np.random.default_rng(0)
  return rng.uniform(-1, 1, (w.batch, *w.image_shape)).astype(np.float32)


def run(workload: str, num_steps: int, warmup: int, dtype="float32", conv_impl=None) -> dict:
  """Compiles and times ganjax's train_step; returns the result record."""
  w = WORKLOADS[workload]
  generator, discriminator = build_models(workload, dtype, conv_impl)
  mesh = parallel.make_mesh(1)
  init = functools.partial(
    create_gan_state,
    generator=generator,
    discriminator=discriminator,
    latent_dim=w.latent,
    element_shape=w.image_shape,
    generator_optimizer=optax.adam(2e-4, b1=0.5),
    discriminator_optimizer=optax.adam(2e-4, b1=0.5),
  )
  state = jax.jit(init, out_shardings=parallel.replicated(mesh))(jax.random.key(0))
  step = parallel.compile_step(
    functools.partial(steps.train_step, objective=losses.non_saturating, latent_dim=w.latent),
    mesh,
  )
  batch = parallel.host_batch_to_global({"image": random_images(workload)}, mesh)
  rng = jax.random.key(1)
  return time_jax_step(
    step,
    state,
    (batch, rng),
    workload,
    num_steps,
    warmup,
    framework="ganjax",
    dtype=dtype,
    conv_impl=conv_impl_used(workload, conv_impl),
  )


def time_jax_step(jitted, state, args, workload, num_steps, warmup, **extra) -> dict:
  """Compiles ``jitted(state, *args) -> (state, metrics)``, times it; returns the result record."""
  t0 = time.perf_counter()
  compiled = jitted.lower(state, *args).compile()
  compile_s = time.perf_counter() - t0

  def one_step():
    nonlocal state
    state, metrics = compiled(state, *args)
    jax.block_until_ready(metrics)

  times = harness.time_steps(one_step, num_steps, warmup)
  return harness.result(workload, times, compile_s=compile_s, **extra, **jax_info())


def main():
  p = harness.parser(__doc__.split("\n")[0])
  add_jax_arguments(p)
  args = p.parse_args()
  r = run(args.workload, args.steps, args.warmup, args.dtype, args.conv_impl)
  harness.report(r, args.json)


if __name__ == "__main__":
  main()
