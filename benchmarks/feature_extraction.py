r"""Throughput of the evaluation's feature extractors: FID Inception and the MNIST classifier.

  python benchmarks/feature_extraction.py [--inception_images 200] [--classifier_images 10000]
      [--json]

Random weights (the speed does not depend on them): ``ganjax.metrics.inception.extract_features``
on 32x32x3 images in [0, 1] (resized to 299 inside, batch 50, pytorch-fid's default), and
``ganjax.evaluation.domain_classifier.classifier_features`` on 28x28x1 images (batch 256). Reports
img/s after one warm-up call (which includes compilation, reported separately).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from ganjax.evaluation import domain_classifier as classifier
from ganjax.metrics import inception


def _time(fn, images) -> tuple[float, float]:
  t0 = time.perf_counter()
  fn(images[: min(len(images), 64)])  # Compiles (the same batch shape as the timed run).
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  fn(images)
  return len(images) / (time.perf_counter() - t0), compile_s


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--inception_images", type=int, default=200)
  parser.add_argument("--classifier_images", type=int, default=10000)
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args()
  rng = np.random.default_rng(0)

  model = inception.InceptionV3()
  variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
  images = rng.random((args.inception_images, 32, 32, 3), dtype=np.float32)
  inception_rate, inception_compile = _time(
    lambda x: inception.extract_features(variables, x, batch_size=50), images
  )

  params = classifier.init_params(jax.random.key(0))
  digits = rng.uniform(-1, 1, (args.classifier_images, 28, 28, 1)).astype(np.float32)
  classifier_rate, classifier_compile = _time(
    lambda x: classifier.classifier_features(params, x, batch_size=256), digits
  )
  result = {
    "device": jax.devices()[0].device_kind,
    "inception_img_per_s": round(inception_rate, 2),
    "inception_compile_s": round(inception_compile, 1),
    "classifier_img_per_s": round(classifier_rate, 1),
    "classifier_compile_s": round(classifier_compile, 1),
  }
  if args.json:
    print(json.dumps(result))
  else:
    for key, value in result.items():
      print(f"{key:24s} {value}")


if __name__ == "__main__":
  main()
