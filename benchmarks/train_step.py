r"""Times ganjax's own jit-compiled ``train_step`` on fixed workloads (random data, no pipeline).

  python benchmarks/train_step.py --workload dcgan28 --steps 20 --warmup 3 [--json]

Workloads (fixed, so numbers compare across time):
  mlp28    the vanilla MLP GAN (configs/vanilla_gan.py), batch 64, z 64
  dcgan28  the 28x28 DCGAN (TF tutorial layout, w = 64), batch 128, z 100
  dcgan64  the 64x64 Radford DCGAN (ngf = ndf = 64), batch 64, z 100
One step = one D update on a real and a fake batch + one G update, BCE on logits, Adam(2e-4, 0.5).
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import time

import jax
import numpy as np
import optax

from ganjax import losses, parallel, steps
from ganjax.models import dcgan, mlp
from ganjax.state import create_gan_state

WORKLOADS = {
    "mlp28": dict(
        generator=lambda: mlp.Generator(image_shape=(28, 28, 1)),
        discriminator=lambda: mlp.Discriminator(),
        shape=(28, 28, 1),
        batch=64,
        latent=64,
    ),
    "dcgan28": dict(
        generator=lambda: dcgan.Generator(image_shape=(28, 28, 1)),
        discriminator=lambda: dcgan.Discriminator(),
        shape=(28, 28, 1),
        batch=128,
        latent=100,
    ),
    "dcgan64": dict(
        generator=lambda: dcgan.Generator(image_shape=(64, 64, 3)),
        discriminator=lambda: dcgan.Discriminator(),
        shape=(64, 64, 3),
        batch=64,
        latent=100,
    ),
}


def run(workload: str, num_steps: int, warmup: int) -> dict:
  spec = WORKLOADS[workload]
  mesh = parallel.make_mesh(1)
  init = functools.partial(
      create_gan_state,
      generator=spec["generator"](),
      discriminator=spec["discriminator"](),
      latent_dim=spec["latent"],
      element_shape=spec["shape"],
      generator_optimizer=optax.adam(2e-4, b1=0.5),
      discriminator_optimizer=optax.adam(2e-4, b1=0.5),
  )
  state = jax.jit(init, out_shardings=parallel.replicated(mesh))(jax.random.key(0))
  step = parallel.compile_step(
      functools.partial(steps.train_step, objective=losses.non_saturating, latent_dim=spec["latent"]),
      mesh,
  )
  images = np.random.default_rng(0).uniform(-1, 1, (spec["batch"], *spec["shape"]))
  batch = parallel.host_batch_to_global({"image": images.astype(np.float32)}, mesh)
  rng = jax.random.key(1)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch, rng).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(num_steps):
    t = time.perf_counter()
    state, metrics = compiled(state, batch, rng)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  median = float(np.median(times))
  return {
      "workload": workload,
      "batch": spec["batch"],
      "steps": num_steps,
      "step_ms_median": 1e3 * median,
      "step_ms_min": 1e3 * float(np.min(times)),
      "images_per_sec": spec["batch"] / median,
      "compile_s": compile_s,
      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "backend": jax.default_backend(),
      "jax": jax.__version__,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workload", choices=sorted(WORKLOADS), required=True)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--json", action="store_true", help="print one JSON line")
  args = parser.parse_args()
  result = run(args.workload, args.steps, args.warmup)
  if args.json:
    print(json.dumps(result))
  else:
    print(
        f"{result['workload']}: {result['images_per_sec']:.1f} img/s "
        f"({result['step_ms_median']:.1f} ms/step median, batch {result['batch']}), "
        f"compile {result['compile_s']:.1f} s, peak RSS {result['peak_rss_mib']:.0f} MiB"
    )


if __name__ == "__main__":
  main()
