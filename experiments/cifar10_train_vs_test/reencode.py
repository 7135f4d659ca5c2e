"""Encodes every JPEG under SRC once more as quality-75, 4:2:0 JPEG under DST (same tree).

python experiments/cifar10_train_vs_test/reencode.py /tmp/test /tmp/test_q75
"""

import os
import sys

from PIL import Image


def main(src: str, dst: str) -> None:
  count = 0
  for root, _, files in os.walk(src):
    for name in files:
      target = os.path.join(dst, os.path.relpath(os.path.join(root, name), src))
      os.makedirs(os.path.dirname(target), exist_ok=True)
      Image.open(os.path.join(root, name)).convert("RGB").save(target, quality=75, subsampling=2)
      count += 1
  print(f"{count} images written under {dst}")


if __name__ == "__main__":
  main(*sys.argv[1:3])
