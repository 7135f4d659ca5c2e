"""Regenerates ``inception_golden.npz``: pytorch-fid's FID Inception outputs with seeded weights.

Run from the repository root (needs the ``fid-reference`` extra: torch, torchvision, pytorch-fid)::

    python tests/testdata/make_inception_golden.py

PyPI's torchvision is a CUDA build whose compiled ops do not load with a CPU torch;
``inception_reference.import_pytorch_fid`` imports it anyway (pytorch-fid needs none of them).

The weights are drawn by ``inception_reference.random_state_dict`` (numpy, seeded) for the names
and shapes of ganjax's converter and loaded *strictly* into pytorch-fid's network, so a name or
shape that differs from pytorch-fid's fails here. pytorch-fid's ``fid_inception_v3()`` downloads
the published weights; ``load_state_dict_from_url`` is replaced so that it returns the random ones
instead (no network access). For every input batch of ``inception_reference.input_cases()`` the
file stores:

* ``<case>/pool3`` (B, 2048): ``pytorch_fid.inception.InceptionV3([3], resize_input=True,
  normalize_input=True)`` on the images (NCHW; grayscale repeated to RGB as PIL's
  ``convert("RGB")`` does in pytorch-fid's loader);
* ``<case>/logits`` (B, 1008): ``fid_inception_v3()``'s full forward pass (``fc`` included) on
  the same preprocessed input (``2 * F.interpolate(x, (299, 299), "bilinear") - 1``);

plus the seed, the recipe version, the weights' and inputs' checksums and the library versions.
It also checks that the features of the two networks agree.
"""

from __future__ import annotations

import os
import sys

import inception_reference as ref
import numpy as np
import torch
import torch.nn.functional as F

from ganjax.metrics import inception

OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "inception_golden.npz")


def pytorch_fid_networks(state_dict: dict[str, np.ndarray]):
  """pytorch-fid's ``InceptionV3`` wrapper and ``fid_inception_v3()``, both with these weights."""
  pfid = ref.import_pytorch_fid()
  import pytorch_fid

  tensors = {k: torch.from_numpy(v) for k, v in state_dict.items()}
  original = pfid.load_state_dict_from_url
  pfid.load_state_dict_from_url = lambda *args, **kwargs: dict(tensors)  # Strict load follows.
  try:
    wrapper = pfid.InceptionV3([3], resize_input=True, normalize_input=True).eval()
    full = pfid.fid_inception_v3().eval()
  finally:
    pfid.load_state_dict_from_url = original
  expected = {k for k in full.state_dict() if not k.endswith("num_batches_tracked")}
  if expected != set(state_dict):
    raise AssertionError(f"Name mismatch: {sorted(expected ^ set(state_dict))[:10]}")
  return wrapper, full, pytorch_fid.__version__


def reference_outputs(wrapper, full, images: np.ndarray) -> dict[str, np.ndarray]:
  """pytorch-fid's pool3 features and the 1008 logits for NHWC ``images`` in [0, 1]."""
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  if x.shape[1] == 1:
    x = x.repeat(1, 3, 1, 1)
  with torch.no_grad():
    pool3 = wrapper(x)[0][:, :, 0, 0]
    logits = full(2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1)
    np.testing.assert_allclose(full.fc(pool3).numpy(), logits.numpy(), rtol=1e-5, atol=1e-5)
  return {"pool3": pool3.numpy(), "logits": logits.numpy()}


def main() -> None:
  torch.set_num_threads(1)
  ref.import_pytorch_fid()
  import torchvision

  state_dict = ref.random_state_dict(inception.pytorch_fid_parameter_shapes())
  wrapper, full, pfid_version = pytorch_fid_networks(state_dict)
  golden = {
    "seed": np.array(ref.SEED),
    "recipe_version": np.array(ref.RECIPE_VERSION),
    "weights_checksum": np.array(ref.checksum(state_dict)),
    "versions": np.array(
      f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"pytorch-fid {pfid_version}"
    ),
  }
  for case, images in ref.input_cases().items():
    outputs = reference_outputs(wrapper, full, images)
    golden[f"{case}/input_checksum"] = np.array(ref.checksum({case: images}))
    for key, value in outputs.items():
      golden[f"{case}/{key}"] = value.astype(np.float32)
      print(
        f"{case}/{key}: shape {value.shape}, mean |x| {np.abs(value).mean():.4f}, "
        f"max |x| {np.abs(value).max():.4f}"
      )
  np.savez_compressed(OUTPUT, **golden)
  print(f"Wrote {OUTPUT} ({os.path.getsize(OUTPUT)} bytes).")


if __name__ == "__main__":
  sys.exit(main())
