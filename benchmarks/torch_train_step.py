r"""The same GAN train step in idiomatic eager PyTorch, for comparison with ganjax on the same CPU.

  python benchmarks/torch_train_step.py --workload dcgan28 --steps 20 --warmup 3 [--json]
      [--dtype bfloat16] [--threads N]

The networks mirror ``ganjax.models`` layer for layer (same kernels, biases, BatchNorm placement,
activations, dropout; parameter counts equal, see tests/benchmarks_test.py) in NCHW with
``nn.Module``s. One step, like ganjax's: D update on a real and a fake batch (G forward under
``no_grad`` with fresh latents, BCEWithLogitsLoss, the two terms averaged), then G update with new
latents through D with its parameters' ``requires_grad_(False)`` (no D weight gradients); Adam(2e-4,
betas (0.5, 0.999)), PyTorch's default implementation. G runs twice per step as in ganjax (the
PyTorch DCGAN example reuses the D step's fake batch in the G step, one G forward fewer).
``--dtype bfloat16`` runs the forward passes and losses under ``torch.autocast("cpu", bfloat16)``.
Needs ``pip install -e '.[bench]'`` (torch==2.13.0, a CPU build).
"""

from __future__ import annotations

import contextlib
import time

import harness
import torch
from torch import nn
from workloads import MLP_D_HIDDEN, MLP_G_HIDDEN, WORKLOADS, Workload

BN_MOMENTUM = 0.1  # PyTorch's convention; flax's 0.9.
BN_EPS = 1e-5


def _mlp(w: Workload) -> tuple[nn.Module, nn.Module]:
  g, n_in = [], w.latent
  for n in MLP_G_HIDDEN:
    g += [nn.Linear(n_in, n), nn.BatchNorm1d(n, BN_EPS, BN_MOMENTUM), nn.LeakyReLU(0.2)]
    n_in = n
  c, h, wd = w.image_shape[2], w.image_shape[0], w.image_shape[1]
  g += [nn.Linear(n_in, c * h * wd), nn.Tanh(), nn.Unflatten(1, (c, h, wd))]
  d, n_in = [nn.Flatten()], c * h * wd
  for n in MLP_D_HIDDEN:
    d += [nn.Linear(n_in, n), nn.LeakyReLU(0.1), nn.Dropout(0.2)]
    n_in = n
  d += [nn.Linear(n_in, 1), nn.Flatten(0)]
  return nn.Sequential(*g), nn.Sequential(*d)


def _dcgan28(w: Workload) -> tuple[nn.Module, nn.Module]:
  """The TF tutorial layout (ganjax.models.dcgan at 28 pixels): LeakyReLU 0.3, dropout 0.3."""
  c, k, f = w.image_shape[2], 5, w.width

  def up(cin, cout, stride):  # "SAME": stride 1 keeps the size, stride 2 doubles it.
    return nn.ConvTranspose2d(cin, cout, k, stride, 2, output_padding=stride - 1, bias=False)

  g = nn.Sequential(
    nn.Linear(w.latent, 7 * 7 * 4 * f, bias=False),
    nn.BatchNorm1d(7 * 7 * 4 * f, BN_EPS, BN_MOMENTUM),
    nn.LeakyReLU(0.3),
    nn.Unflatten(1, (4 * f, 7, 7)),
    up(4 * f, 2 * f, 1),  # 7x7
    nn.BatchNorm2d(2 * f, BN_EPS, BN_MOMENTUM),
    nn.LeakyReLU(0.3),
    up(2 * f, f, 2),  # 14x14
    nn.BatchNorm2d(f, BN_EPS, BN_MOMENTUM),
    nn.LeakyReLU(0.3),
    up(f, c, 2),  # 28x28
    nn.Tanh(),
  )
  d = nn.Sequential(
    nn.Conv2d(c, f, k, 2, padding=2),  # 14x14
    nn.LeakyReLU(0.3),
    nn.Dropout(0.3),
    nn.Conv2d(f, 2 * f, k, 2, padding=2),  # 7x7
    nn.LeakyReLU(0.3),
    nn.Dropout(0.3),
    nn.Flatten(),
    nn.Linear(7 * 7 * 2 * f, 1),
    nn.Flatten(0),
  )
  return g, d


def _radford(w: Workload) -> tuple[nn.Module, nn.Module]:
  """Radford et al. at 32/64 pixels, as in PyTorch's DCGAN example (logits, no sigmoid)."""
  size, c = w.image_shape[0], w.image_shape[2]
  stages = size.bit_length() - 3
  channels = [w.width * 2 ** (stages - 1 - i) for i in range(stages)]  # 8w, 4w, 2w, w at 64
  g = [
    nn.Unflatten(1, (w.latent, 1, 1)),
    nn.ConvTranspose2d(w.latent, channels[0], 4, 1, 0, bias=False),  # 4x4
    nn.BatchNorm2d(channels[0], BN_EPS, BN_MOMENTUM),
    nn.ReLU(),
  ]
  for cin, cout in zip(channels[:-1], channels[1:], strict=True):
    g += [
      nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False),
      nn.BatchNorm2d(cout, BN_EPS, BN_MOMENTUM),
      nn.ReLU(),
    ]
  g += [nn.ConvTranspose2d(channels[-1], c, 4, 2, 1, bias=False), nn.Tanh()]
  d, cin = [], c
  for i, cout in enumerate(reversed(channels)):
    d.append(nn.Conv2d(cin, cout, 4, 2, 1, bias=False))
    if i > 0:
      d.append(nn.BatchNorm2d(cout, BN_EPS, BN_MOMENTUM))
    d.append(nn.LeakyReLU(0.2))
    cin = cout
  d += [nn.Conv2d(cin, 1, 4, 1, 0, bias=False), nn.Flatten(0)]
  return nn.Sequential(*g), nn.Sequential(*d)


def _dcgan_init(module: nn.Module) -> None:
  """Radford et al.'s initialisation: weights N(0, 0.02), BN scales N(1, 0.02), offsets 0."""
  if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
    nn.init.normal_(module.weight, 0.0, 0.02)
    if module.bias is not None:
      nn.init.zeros_(module.bias)
  elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
    nn.init.normal_(module.weight, 1.0, 0.02)
    nn.init.zeros_(module.bias)


def build_models(workload: str) -> tuple[nn.Module, nn.Module]:
  """The workload's (generator, discriminator) in train mode."""
  w = WORKLOADS[workload]
  if w.family == "mlp":
    g, d = _mlp(w)
  elif w.family == "dcgan" and w.image_shape[0] == 28:
    g, d = _dcgan28(w)
  elif w.family == "dcgan" and w.image_shape[0] in (32, 64):
    g, d = _radford(w)
  else:
    raise ValueError(f"No PyTorch networks for workload {workload!r} ({w}).")
  if w.family == "dcgan":
    g.apply(_dcgan_init)
    d.apply(_dcgan_init)
  return g.train(), d.train()


def make_step(workload: str, dtype: str = "float32"):
  """Returns ``step(real)``: one D update and one G update, eager PyTorch."""
  w = WORKLOADS[workload]
  g, d = build_models(workload)
  g_opt = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
  d_opt = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
  bce = nn.BCEWithLogitsLoss()

  def autocast():
    if dtype == "float32":
      return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=getattr(torch, dtype))

  def step(real: torch.Tensor) -> None:
    # Discriminator: real batch and a fake batch from fresh latents.
    d_opt.zero_grad(set_to_none=True)
    with autocast():
      with torch.no_grad():
        fake = g(torch.randn(w.batch, w.latent))
      real_logits = d(real)
      fake_logits = d(fake)
      d_loss = 0.5 * (
        bce(real_logits, torch.ones_like(real_logits))
        + bce(fake_logits, torch.zeros_like(fake_logits))
      )
    d_loss.backward()
    d_opt.step()
    # Generator: non-saturating loss through a frozen D.
    d.requires_grad_(False)
    g_opt.zero_grad(set_to_none=True)
    with autocast():
      logits = d(g(torch.randn(w.batch, w.latent)))
      g_loss = bce(logits, torch.ones_like(logits))
    g_loss.backward()
    g_opt.step()
    d.requires_grad_(True)

  return step


def parameter_counts(workload: str) -> tuple[int, int]:
  """Trainable parameters of (G, D), for checking the mirror against ganjax."""
  g, d = build_models(workload)
  return tuple(sum(p.numel() for p in m.parameters()) for m in (g, d))


def run(workload: str, num_steps: int, warmup: int, dtype="float32", threads=None) -> dict:
  """Times the eager PyTorch step; returns the result record."""
  if threads:
    torch.set_num_threads(threads)
  torch.manual_seed(0)
  w = WORKLOADS[workload]
  step = make_step(workload, dtype)
  h, wd, c = w.image_shape
  real = torch.rand(w.batch, c, h, wd) * 2 - 1
  t0 = time.perf_counter()
  step(real)  # The first step allocates and picks kernels; reported, like a compile time.
  first_step_s = time.perf_counter() - t0
  times = harness.time_steps(lambda: step(real), num_steps, max(0, warmup - 1))
  return harness.result(
    workload,
    times,
    framework="torch",
    dtype=dtype,
    conv_impl=None,
    compile_s=None,
    first_step_s=first_step_s,
    threads=torch.get_num_threads(),
    interop_threads=torch.get_num_interop_threads(),
    torch=torch.__version__,
    mkldnn=torch.backends.mkldnn.is_available(),
  )


def main():
  p = harness.parser(__doc__.split("\n")[0])
  p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
  args = p.parse_args()
  harness.report(run(args.workload, args.steps, args.warmup, args.dtype, args.threads), args.json)


if __name__ == "__main__":
  main()
