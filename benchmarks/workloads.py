"""The fixed benchmark workloads, shared by the JAX and PyTorch scripts (imports no framework).

Fixed so that numbers compare across time; change them only together with the recorded results.

  mlp28    the vanilla MLP GAN (configs/vanilla_gan.py): G z 64 -> 256 -> 512 -> 1024 -> 784 with
           BatchNorm + LeakyReLU(0.2), tanh; D 784 -> 512 -> 256 -> 128 -> 1 with LeakyReLU(0.1)
           and dropout 0.2; batch 64
  dcgan28  the 28x28 DCGAN (TF tutorial layout, w = 64), batch 128, z 100
  dcgan64  the 64x64 Radford DCGAN (ngf = ndf = 64), batch 64, z 100

One step = one D update on a real and a fake batch + one G update (non-saturating loss), BCE on
logits, Adam(2e-4, b1 0.5), random input images of the right shape (no data pipeline).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Workload:
  """One benchmark workload.

  Attributes:
    family: ``"mlp"`` or ``"dcgan"`` (the ``ganjax.models`` module).
    image_shape: ``(H, W, C)`` of one image.
    batch: images per D batch (real and fake each) and per G batch.
    latent: size of the latent vector z.
    width: DCGAN channel multiplier (ngf = ndf); unused by the MLP.
  """

  family: str
  image_shape: tuple[int, int, int]
  batch: int
  latent: int
  width: int = 64


WORKLOADS = {
  "mlp28": Workload("mlp", (28, 28, 1), batch=64, latent=64),
  "dcgan28": Workload("dcgan", (28, 28, 1), batch=128, latent=100),
  "dcgan64": Workload("dcgan", (64, 64, 3), batch=64, latent=100),
}

# The MLP GAN's hidden widths (ganjax.models.mlp defaults).
MLP_G_HIDDEN = (256, 512, 1024)
MLP_D_HIDDEN = (512, 256, 128)
