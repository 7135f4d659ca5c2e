r"""The machine's matrix-multiply rate in one framework: the ceiling for the step benchmarks.

  python benchmarks/gemm.py --framework jax|torch [--sizes 1024,2048] [--dtype float32] [--json]

Times ``C = A @ B`` for square n x n matrices (2 n^3 FLOPs) under ``jax.jit`` or ``torch.mm`` and
reports the best rate over the sizes (each size: best of ``--repeats`` calls after a warm-up).
Each framework should run in its own process (benchmarks/compare.py does so).
"""

from __future__ import annotations

import argparse
import json
import time


def _jax_matmul(n: int, dtype: str):
  import jax
  import jax.numpy as jnp

  keys = jax.random.split(jax.random.key(0))
  a, b = (jax.random.normal(k, (n, n), jnp.float32).astype(dtype) for k in keys)
  f = jax.jit(jnp.matmul)
  return lambda: f(a, b).block_until_ready()


def _torch_matmul(n: int, dtype: str, threads: int | None = None):
  import torch

  if threads:
    torch.set_num_threads(threads)
  a, b = (torch.randn(n, n).to(getattr(torch, dtype)) for _ in range(2))
  return lambda: torch.mm(a, b)


def versions(framework: str) -> dict:
  if framework == "jax":
    import jax

    return {"jax": jax.__version__, "backend": jax.default_backend()}
  import torch

  return {"torch": torch.__version__, "threads": torch.get_num_threads()}


def measure(framework: str, sizes: list[int], dtype: str, repeats: int, threads=None) -> dict:
  """Best GFLOP/s per size and overall."""
  rates = {}
  for n in sizes:
    f = _jax_matmul(n, dtype) if framework == "jax" else _torch_matmul(n, dtype, threads)
    f()
    best = float("inf")
    for _ in range(repeats):
      t = time.perf_counter()
      f()
      best = min(best, time.perf_counter() - t)
    rates[n] = 2 * n**3 / best / 1e9
  best_n = max(rates, key=rates.get)
  return {
    "framework": framework,
    "dtype": dtype,
    "gflop_per_sec": rates[best_n],
    "best_size": best_n,
    "gflop_per_sec_by_size": rates,
    **versions(framework),
  }


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--framework", choices=("jax", "torch"), required=True)
  p.add_argument("--sizes", default="1024,2048,3072", help="comma-separated matrix sizes")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
  p.add_argument("--json", action="store_true", help="print one JSON line")
  args = p.parse_args()
  sizes = [int(s) for s in args.sizes.split(",")]
  r = measure(args.framework, sizes, args.dtype, args.repeats, args.threads)
  if args.json:
    print(json.dumps(r))
  else:
    by_size = ", ".join(f"{n}: {g:.1f}" for n, g in r["gflop_per_sec_by_size"].items())
    print(f"{args.framework} {args.dtype} GEMM: {r['gflop_per_sec']:.1f} GFLOP/s ({by_size})")


if __name__ == "__main__":
  main()
