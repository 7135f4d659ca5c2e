r"""Times every convolution of the DCGAN workloads, per implementation (``conv_impl``), on its own.

  python benchmarks/conv_layers.py [--workload dcgan28,dcgan64] [--impls xla,subpixel,fast]
      [--variants] [--rounds 5] [--layer "G 4->8"] [--json]

For each layer (with the workload's batch size) and implementation: the forward pass, and the
forward + backward pass (input and kernel gradients; the kernel gradient only for the
discriminator's input layer and the generator's 1x1 input layer, whose input gradients no step
needs). Each function is jit-compiled and timed
with ``block_until_ready`` in interleaved rounds (every implementation once per round, so load
from other processes hits all of them alike); the medians are printed. GFLOP/s count the direct
formulation's useful work only: 2 x (input or output pixels) x taps x in x out features per pass
(for a transposed convolution every input pixel meets every tap), whatever the formulation
computes.

``--variants`` adds the formulations that ``"fast"`` does not pick, so that the choice can be
checked: ``fast:<forward>`` forces the forward pass of the transposed (dilated) convolution to the
``subpixel``, ``phase`` or ``col2im`` form and ``fast:wg-<form>`` the kernel gradient to the
YNNPACK convolution (``conv``) or patches @ cotangent (``gemm``); ``im2col`` (patches + one dot)
and ``s2d`` (space-to-depth + a stride-1 convolution) are plain-autodiff formulations of the
strided convolution, ``phase`` and ``col2im`` of the transposed one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ganjax.models import conv_kernels, layers  # noqa: E402


class Layer(NamedTuple):
  """One convolution of a workload (see ganjax/models/dcgan.py for the layouts)."""

  name: str
  transpose: bool
  batch: int
  size: int  # Input height = width.
  in_features: int
  features: int
  kernel: int
  stride: int
  padding: str
  needs_dx: bool


def _workload_layers(workload: str) -> list[Layer]:
  if workload == "dcgan28":  # TF tutorial layout, w = 64, batch 128.
    b = 128
    return [
      Layer("28 G 7->7 5x5s1", True, b, 7, 256, 128, 5, 1, "SAME", True),
      Layer("28 G 7->14 5x5s2", True, b, 7, 128, 64, 5, 2, "SAME", True),
      Layer("28 G 14->28 5x5s2", True, b, 14, 64, 1, 5, 2, "SAME", True),
      Layer("28 D 28->14 5x5s2", False, b, 28, 1, 64, 5, 2, "SAME", False),
      Layer("28 D 14->7 5x5s2", False, b, 14, 64, 128, 5, 2, "SAME", True),
    ]
  size = {"dcgan32": 32, "dcgan64": 64}[workload]  # Radford layout, ngf = ndf = 64, batch 64.
  b = 64
  channels = [64 * 2**i for i in range(size.bit_length() - 3)][::-1]  # 512, 256, 128, 64 at 64.
  p = f"{size} "
  out = [Layer(p + "G 1->4 4x4 VALID", True, b, 1, 100, channels[0], 4, 1, "VALID", False)]
  n = 4
  for c_in, c_out in zip(channels, channels[1:] + [3], strict=True):
    out.append(Layer(p + f"G {n}->{2 * n} 4x4s2", True, b, n, c_in, c_out, 4, 2, "SAME", True))
    n *= 2
  for i, (c_in, c_out) in enumerate(zip([3] + channels[::-1][:-1], channels[::-1], strict=True)):
    out.append(Layer(p + f"D {n}->{n // 2} 4x4s2", False, b, n, c_in, c_out, 4, 2, "SAME", i > 0))
    n //= 2
  out.append(Layer(p + "D 4->1 4x4 VALID", False, b, 4, channels[0], 1, 4, 1, "VALID", True))
  return out


def useful_flops(layer: Layer) -> float:
  """2 x MACs of the direct formulation of one pass (see the module docstring)."""
  pixels = layer.size**2  # A transposed convolution: every input pixel meets every tap.
  if not layer.transpose:
    out = (
      (layer.size - layer.kernel) // layer.stride + 1
      if layer.padding == "VALID"
      else (-(-layer.size // layer.stride))
    )
    pixels = out**2
  return 2.0 * layer.batch * pixels * layer.kernel**2 * layer.in_features * layer.features


# --- Formulations outside ganjax (for --variants): f(x, kernel, layer) with plain autodiff. ---


def _pads(layer: Layer) -> tuple[tuple[int, int], ...]:
  if layer.transpose:
    return (layers.conv_transpose_padding(layer.kernel, layer.stride, layer.padding),) * 2
  size, k = (layer.size,) * 2, (layer.kernel,) * 2
  return tuple(lax.padtype_to_pads(size, k, (layer.stride,) * 2, layer.padding))


def _im2col(x, kernel, layer):
  """Strided convolution: patches (strided slices) concatenated, one dot."""
  s, k = layer.stride, layer.kernel
  xp = conv_kernels._pad(x, _pads(layer))
  out = (xp.shape[1] - k) // s + 1
  lim = s * (out - 1) + 1
  cols = [xp[:, i : i + lim : s, j : j + lim : s] for i in range(k) for j in range(k)]
  cols = jnp.concatenate(cols, axis=-1).reshape(-1, k * k * x.shape[-1])
  y = cols @ kernel.reshape(-1, kernel.shape[-1])
  return y.reshape(x.shape[0], out, out, -1)


def _s2d(x, kernel, layer):
  """Strided convolution: space-to-depth, then a stride-1 convolution on s*s*C channels."""
  s, k = layer.stride, layer.kernel
  (lo, _), _ = _pads(layer)
  out = (layer.size + sum(_pads(layer)[0]) - k) // s + 1
  kc = -(-k // s)
  n = out + kc - 1
  xp = conv_kernels._pad(x, ((lo, s * n - layer.size - lo),) * 2)
  b, c = x.shape[0], x.shape[-1]
  xs = xp.reshape(b, n, s, n, s, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, n, n, s * s * c)
  kp = jnp.pad(kernel, ((0, kc * s - k), (0, kc * s - k), (0, 0), (0, 0)))
  ks = kp.reshape(kc, s, kc, s, c, -1).transpose(0, 2, 1, 3, 4, 5).reshape(kc, kc, s * s * c, -1)
  return lax.conv_general_dilated(
    xs, ks, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def _phase(x, kernel, layer):
  return conv_kernels._dilated_phase(x, kernel, (layer.stride,) * 2, _pads(layer), None)


def _col2im(x, kernel, layer):
  return conv_kernels._dilated_col2im(x, kernel, (layer.stride,) * 2, _pads(layer), None)


PLAIN = {
  "im2col": (False, _im2col),
  "s2d": (False, _s2d),
  "phase": (True, _phase),
  "col2im": (True, _col2im),
}

# Variants of "fast": module constants of ganjax.models.layers set while tracing.
_INF = float("inf")
FAST_VARIANTS = {
  "fast:subpixel": dict(_COL2IM_MAX_FEATURES=0, _SUBPIXEL_MAX_WASTE=_INF),
  "fast:phase": dict(_COL2IM_MAX_FEATURES=0, _SUBPIXEL_MAX_WASTE=0),
  "fast:col2im": dict(_COL2IM_MAX_FEATURES=1 << 30),
  "fast:wg-conv": dict(_WEIGHT_GRAD_CONV_MAX_PIXELS=1 << 30, _WEIGHT_GRAD_CONV_MIN_FEATURES=0),
  "fast:wg-gemm": dict(_WEIGHT_GRAD_CONV_MAX_PIXELS=-1),
}


@contextlib.contextmanager
def _constants(values: dict):
  old = {k: getattr(layers, k) for k in values}
  for k, v in values.items():
    setattr(layers, k, v)
  try:
    yield
  finally:
    for k, v in old.items():
      setattr(layers, k, v)


def _module(layer: Layer, impl: str) -> nn.Module:
  make = layers.conv_transpose if layer.transpose else layers.conv
  return make(layer.features, layer.kernel, layer.stride, layer.padding, use_bias=False, impl=impl)


def _functions(layer: Layer, impl: str, x, kernel, cotangent):
  """Compiled (forward, forward + backward) of ``layer`` by ``impl``; None where not applicable."""
  if impl in PLAIN:
    transpose, f = PLAIN[impl]
    if transpose != layer.transpose or layer.stride == 1:
      return None

    def apply(k, x):
      return f(x, k, layer)

    constants = {}
  else:
    base = impl.split(":")[0]
    if impl == "subpixel" and not layer.transpose:
      return None  # Same as "xla".
    if base == "fast" and impl != "fast" and layer.stride == 1:
      return None
    module = _module(layer, base)
    constants = FAST_VARIANTS.get(impl, {})

    def apply(k, x):
      return module.apply({"params": {"kernel": k}}, x)

  def forward(k, x, ct):
    return apply(k, x)

  def forward_backward(k, x, ct):
    if layer.needs_dx:
      y, vjp = jax.vjp(apply, k, x)
    else:
      y, vjp = jax.vjp(lambda k: apply(k, x), k)
    return y, vjp(ct)

  with _constants(constants):
    args = (kernel, x, cotangent)
    return tuple(jax.jit(f).lower(*args).compile() for f in (forward, forward_backward))


def _time(f, args) -> float:
  t = time.perf_counter()
  jax.block_until_ready(f(*args))
  return time.perf_counter() - t


def run_layer(layer: Layer, impls: list[str], rounds: int, budget_s: float) -> dict:
  rng = np.random.default_rng(0)
  x = jnp.asarray(
    rng.standard_normal((layer.batch, layer.size, layer.size, layer.in_features)), jnp.float32
  )
  kernel = jnp.asarray(
    0.05 * rng.standard_normal((layer.kernel, layer.kernel, layer.in_features, layer.features)),
    jnp.float32,
  )
  y = jax.eval_shape(
    lambda k, x: _module(layer, "xla").apply({"params": {"kernel": k}}, x), kernel, x
  )
  cotangent = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  args = (kernel, x, cotangent)
  compiled = {}
  for impl in impls:
    fns = _functions(layer, impl, x, kernel, cotangent)
    if fns is not None:
      compiled[impl] = fns
      for f in fns:
        _time(f, args)  # Warm-up.
  times = {impl: ([], []) for impl in compiled}
  for _ in range(rounds):
    for impl, fns in compiled.items():
      for f, samples in zip(fns, times[impl], strict=True):
        # A very slow function (XLA's transposed convolution gradients) is timed fewer times.
        if not samples or sum(samples) < budget_s:
          samples.append(_time(f, args))
  flops = useful_flops(layer)
  passes = 3 if layer.needs_dx else 2
  result = {
    "layer": layer.name,
    "gflop_forward": flops / 1e9,
    "passes_backward": passes,
    "impls": {},
  }
  for impl, (fwd, fwd_bwd) in times.items():
    fwd_s, fwd_bwd_s = float(np.median(fwd)), float(np.median(fwd_bwd))
    result["impls"][impl] = {
      "forward_ms": 1e3 * fwd_s,
      "forward_gflops": flops / fwd_s / 1e9,
      "forward_backward_ms": 1e3 * fwd_bwd_s,
      "forward_backward_gflops": passes * flops / fwd_bwd_s / 1e9,
      "samples": [len(fwd), len(fwd_bwd)],
    }
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--workload", default="dcgan28,dcgan64", help="comma-separated: dcgan28, dcgan32, dcgan64"
  )
  parser.add_argument("--impls", default="xla,subpixel,fast", help="comma-separated")
  parser.add_argument(
    "--variants",
    action="store_true",
    help="also the formulations 'fast' does not pick (see the docstring)",
  )
  parser.add_argument("--layer", default="", help="only layers whose name contains this")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument(
    "--budget", type=float, default=1.0, help="seconds after which a function is not timed again"
  )
  parser.add_argument("--json", action="store_true", help="print one JSON line per layer")
  args = parser.parse_args()
  impls = args.impls.split(",")
  if args.variants:
    impls += [*FAST_VARIANTS, *PLAIN]
  for impl in impls:
    base = impl.split(":")[0]
    if impl not in PLAIN and impl not in FAST_VARIANTS:
      layers.check_choice("impl", base, layers.CONV_IMPLS)
  if not args.json:
    print(
      f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs; "
      "ms (GFLOP/s of the direct formulation), medians of interleaved rounds"
    )
  for workload in args.workload.split(","):
    for layer in _workload_layers(workload):
      if args.layer not in layer.name:
        continue
      result = run_layer(layer, impls, args.rounds, args.budget)
      if args.json:
        print(json.dumps(result), flush=True)
        continue
      grads = "dx+dW" if layer.needs_dx else "dW"
      print(
        f"{layer.name}  (batch {layer.batch}, {layer.in_features}->{layer.features}, "
        f"{result['gflop_forward']:.2f} GFLOP/pass; fwd+bwd = fwd+{grads})",
        flush=True,
      )
      for impl, r in result["impls"].items():
        print(
          f"  {impl:14s} fwd {r['forward_ms']:8.2f} ms ({r['forward_gflops']:5.0f})"
          f"   fwd+bwd {r['forward_backward_ms']:8.2f} ms ({r['forward_backward_gflops']:5.0f})",
          flush=True,
        )


if __name__ == "__main__":
  main()
