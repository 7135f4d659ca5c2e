"""Regenerates ``torch_archive_sample.pt`` and ``torch_archive_sample.npz``: a state dict saved by
``torch.save`` (zip format) and the values torch itself gives for it, the reference of
``ganjax.metrics.torch_archive`` (tests/inception_fid_helper_test.py). Needs torch::

    python tests/testdata/make_torch_archive_sample.py

The tensors cover what the reader must handle: several dtypes, a non-contiguous view (a
transpose), two tensors sharing one storage at different offsets, a 0-d tensor and an
``nn.Parameter``.
"""

from __future__ import annotations

import collections
import os

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
  gen = torch.Generator().manual_seed(0)
  base = torch.randn(6, 5, generator=gen)
  shared = torch.arange(20, dtype=torch.float32)
  state = collections.OrderedDict(
    float32=torch.randn(2, 3, 4, generator=gen),
    transposed=base.t(),  # Strides (1, 5): not contiguous.
    float16=torch.randn(7, generator=gen).half(),
    bfloat16=torch.randn(3, 2, generator=gen).bfloat16(),
    int64=torch.arange(-3, 9).reshape(3, 4),
    bool=torch.tensor([True, False, True]),
    scalar=torch.tensor(2.5),
    shared_head=shared[:8].view(2, 4),
    shared_tail=shared[12:],  # Same storage, offset 12.
    parameter=torch.nn.Parameter(torch.randn(4, generator=gen)),
  )
  torch.save(state, os.path.join(HERE, "torch_archive_sample.pt"))
  expected = {}
  for name, value in torch.load(os.path.join(HERE, "torch_archive_sample.pt")).items():
    value = value.detach()
    expected[name] = value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()
  np.savez(os.path.join(HERE, "torch_archive_sample.npz"), **expected)
  print(f"wrote {len(expected)} tensors with torch {torch.__version__}")


if __name__ == "__main__":
  main()
