"""Shared by the step benchmarks: command-line flags, the timing loop and the result record.

Imports no framework, so the PyTorch script uses it as well.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from collections.abc import Callable

import flops
import numpy as np
from workloads import WORKLOADS

DTYPES = ("float32", "bfloat16")


def parser(description: str) -> argparse.ArgumentParser:
  """The flags every step benchmark takes."""
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--workload", choices=sorted(WORKLOADS), required=True)
  p.add_argument("--steps", type=int, default=20, help="timed steps")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
  p.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype")
  p.add_argument("--json", action="store_true", help="print one JSON line")
  return p


def time_steps(step: Callable[[], None], num_steps: int, warmup: int) -> list[float]:
  """Seconds of each of ``num_steps`` calls of ``step`` (which must wait for its result)."""
  for _ in range(warmup):
    step()
  times = []
  for _ in range(num_steps):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
  return times


def peak_rss_mib() -> float:
  """The process's peak resident set size (Linux reports ru_maxrss in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def result(workload: str, times: list[float], **extra) -> dict:
  """The JSON record of one run: throughput, step times, GFLOP/s, memory and ``extra`` fields."""
  batch = WORKLOADS[workload].batch
  median = float(np.median(times))
  step_flops = flops.step_flops(workload)
  return {
    "workload": workload,
    "batch": batch,
    "steps": len(times),
    "images_per_sec": batch / median,
    "step_ms_median": 1e3 * median,
    "step_ms_min": 1e3 * float(np.min(times)),
    "step_ms_max": 1e3 * float(np.max(times)),
    "gflop_per_step": step_flops / 1e9,
    "gflop_per_sec": step_flops / median / 1e9,
    "peak_rss_mib": peak_rss_mib(),
    "cpu_count": os.cpu_count(),
    "python": platform.python_version(),
    **extra,
  }


def report(r: dict, as_json: bool) -> None:
  """Prints the record as one JSON line, or as one readable line."""
  if as_json:
    print(json.dumps(r))
    return
  compile_s = r.get("compile_s")
  compiled = f", compile {compile_s:.1f} s" if compile_s is not None else ""
  print(
    f"{r['framework']} {r['workload']} ({r['dtype']}): {r['images_per_sec']:.1f} img/s, "
    f"{r['step_ms_median']:.1f} ms/step median ({r['step_ms_min']:.1f}..{r['step_ms_max']:.1f}), "
    f"{r['gflop_per_sec']:.1f} GFLOP/s ({r['gflop_per_step']:.2f} GFLOP/step), batch "
    f"{r['batch']}{compiled}, peak RSS {r['peak_rss_mib']:.0f} MiB"
  )
