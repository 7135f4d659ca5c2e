r"""Analytic FLOP count of one benchmark step, from the networks' layer lists.

  python benchmarks/flops.py [--workload dcgan64]      # per-layer breakdown and step totals

One *pass* of a layer over a batch of N (multiply-add = 2 FLOPs, every kernel tap of the direct
formulation counted, zero padding included):

* dense ``in -> out``: ``2 N in out``;
* convolution: ``2 N Hout Wout Cout Cin kh kw``;
* transposed convolution: likewise over its *input* pixels, ``2 N Hin Win Cin Cout kh kw``
  (each input pixel scatters the whole kernel), whatever formulation the framework runs
  (ganjax's sub-pixel form multiplies extra zero taps: they are not counted).

Forward = 1 pass; backward = a dX pass (input gradient) and a dW pass (weight gradient), each as
costly as the forward pass. Per training step (one D update + one G update):

* D step = G forward + D forward/backward on the real batch and on the fake batch (dW everywhere,
  dX everywhere except D's first layer, whose input needs no gradient);
* G step = G forward/backward (dW everywhere, dX except G's first layer) + D forward + D dX-only
  backward through every layer (down to the image; no D weight gradients).

So per step a G layer makes 2 forward, 1 dW and 1 dX pass (0 for its first layer); a D layer makes
3 forward, 2 dW and 3 dX passes (1 for its first layer). BatchNorm, activations, dropout, the loss,
biases and Adam are not counted (they are a few percent at most of these workloads). The same
count is used for ganjax, the hand-written JAX step and PyTorch, so GFLOP/s compare directly.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

from workloads import MLP_D_HIDDEN, MLP_G_HIDDEN, WORKLOADS, Workload


@dataclasses.dataclass(frozen=True)
class Layer:
  """One dense or convolution layer.

  Attributes:
    net: ``"G"`` or ``"D"``.
    name: a readable name (``"G conv_t 1"``, ...).
    kind: ``"dense"``, ``"conv"`` or ``"conv_transpose"``.
    kernel: the kernel shape in flax's layout, ``(in, out)`` or ``(kh, kw, Cin, Cout)``.
    pixels: output pixels (conv), input pixels (transposed conv) or 1 (dense), per example.
    first: the network's first layer (its input needs no gradient).
  """

  net: str
  name: str
  kind: str
  kernel: tuple[int, ...]
  pixels: int
  first: bool

  def pass_flops(self, batch: int) -> float:
    """FLOPs of one pass (forward, dX or dW) over a batch."""
    return 2.0 * batch * self.pixels * math.prod(self.kernel)

  def passes(self) -> dict[str, int]:
    """How many forward, dX and dW passes one training step makes (module docstring)."""
    if self.net == "G":
      return {"fwd": 2, "dx": 0 if self.first else 1, "dw": 1}
    return {"fwd": 3, "dx": 1 if self.first else 3, "dw": 2}


def _mlp_layers(w: Workload) -> list[Layer]:
  g_sizes = (w.latent, *MLP_G_HIDDEN, math.prod(w.image_shape))
  d_sizes = (math.prod(w.image_shape), *MLP_D_HIDDEN, 1)
  return [
    Layer(net, f"{net} dense {i}", "dense", (n_in, n_out), 1, i == 0)
    for net, sizes in (("G", g_sizes), ("D", d_sizes))
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
  ]


def _dcgan28_layers(w: Workload) -> list[Layer]:
  c, k, f = w.image_shape[-1], 5, w.width
  g = [
    Layer("G", "G dense 0", "dense", (w.latent, 7 * 7 * 4 * f), 1, True),
    Layer("G", "G conv_t 1 (7->7)", "conv_transpose", (k, k, 4 * f, 2 * f), 49, False),
    Layer("G", "G conv_t 2 (7->14)", "conv_transpose", (k, k, 2 * f, f), 49, False),
    Layer("G", "G conv_t 3 (14->28)", "conv_transpose", (k, k, f, c), 196, False),
  ]
  d = [
    Layer("D", "D conv 0 (28->14)", "conv", (k, k, c, f), 196, True),
    Layer("D", "D conv 1 (14->7)", "conv", (k, k, f, 2 * f), 49, False),
    Layer("D", "D dense 2", "dense", (7 * 7 * 2 * f, 1), 1, False),
  ]
  return g + d


def _radford_layers(w: Workload) -> list[Layer]:
  """The 32/64-pixel layouts: 4x4 kernels, stride 2 between 4x4 and the image size."""
  size, c = w.image_shape[0], w.image_shape[-1]
  stages = size.bit_length() - 3  # 4 at 64 pixels: channels 8w, 4w, 2w, w.
  channels = [w.width * 2 ** (stages - 1 - i) for i in range(stages)]
  g_in = [w.latent, *channels]
  g_out = [*channels, c]
  g_side = [1] + [4 * 2**i for i in range(stages)]  # input side of each transposed conv
  g = [
    Layer(
      "G",
      f"G conv_t {i} ({s}->{4 if i == 0 else 2 * s})",
      "conv_transpose",
      (4, 4, cin, cout),
      s * s,
      i == 0,
    )
    for i, (cin, cout, s) in enumerate(zip(g_in, g_out, g_side, strict=True))
  ]
  d_in = [c, *reversed(channels)]
  d_out = [*reversed(channels), 1]
  d_side = [size // 2 ** (i + 1) for i in range(stages)] + [1]  # output side of each conv
  d = [
    Layer("D", f"D conv {i} (->{s})", "conv", (4, 4, cin, cout), s * s, i == 0)
    for i, (cin, cout, s) in enumerate(zip(d_in, d_out, d_side, strict=True))
  ]
  return g + d


def layers(workload: str) -> list[Layer]:
  """The dense and convolution layers of a workload's G and D, in order."""
  w = WORKLOADS[workload]
  if w.family == "mlp":
    return _mlp_layers(w)
  if w.family == "dcgan" and w.image_shape[0] == 28:
    return _dcgan28_layers(w)
  if w.family == "dcgan" and w.image_shape[0] in (32, 64):
    return _radford_layers(w)
  raise ValueError(f"No layer list for workload {workload!r} ({w}).")


def breakdown(workload: str) -> list[dict]:
  """Per layer: kernel, pixels, GFLOP of one pass, passes per step and GFLOP per step."""
  batch = WORKLOADS[workload].batch
  rows = []
  for layer in layers(workload):
    passes = layer.passes()
    one = layer.pass_flops(batch)
    rows.append(
      {
        "layer": layer.name,
        "kind": layer.kind,
        "kernel": layer.kernel,
        "pixels": layer.pixels,
        "pass_gflop": one / 1e9,
        **passes,
        "step_gflop": one * sum(passes.values()) / 1e9,
      }
    )
  return rows


def step_flops(workload: str) -> float:
  """FLOPs of one training step (one D update + one G update) of ``workload``."""
  batch = WORKLOADS[workload].batch
  return sum(layer.pass_flops(batch) * sum(layer.passes().values()) for layer in layers(workload))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workload", choices=sorted(WORKLOADS), action="append")
  args = parser.parse_args()
  for workload in args.workload or list(WORKLOADS):
    print(f"## {workload} (batch {WORKLOADS[workload].batch})")
    print(f"{'layer':24} {'kernel':>20} {'pixels':>7} {'pass GF':>9} fwd dx dw {'step GF':>9}")
    for r in breakdown(workload):
      print(
        f"{r['layer']:24} {str(r['kernel']):>20} {r['pixels']:>7} {r['pass_gflop']:9.4f} "
        f"{r['fwd']:>3} {r['dx']:>2} {r['dw']:>2} {r['step_gflop']:9.3f}"
      )
    print(f"step: {step_flops(workload) / 1e9:.3f} GFLOP\n")


if __name__ == "__main__":
  main()
