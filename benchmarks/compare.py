r"""Runs the ganjax / hand-written JAX / PyTorch step benchmarks and prints a markdown table.

  python benchmarks/compare.py [--workloads mlp28,dcgan28,dcgan64] [--rounds 3] [--steps 20]
      [--dtype float32] [--out benchmarks/results/cpu.md]

1. Measures the machine's GEMM rate in this run: benchmarks/gemm.py under JAX and under PyTorch,
   each in its own subprocess; the larger is the "machine GEMM rate".
2. Per workload, ``--rounds`` rounds of ganjax (train_step.py), PyTorch (torch_train_step.py) and
   the hand-written JAX step (handwritten_step.py), alternating, each run a fresh subprocess with
   ``--json``; a round's img/s is that run's median step.
3. Prints (and with ``--out`` writes) a markdown table, machine information first: img/s median
   (min..max over rounds), ratios, GFLOP/s (benchmarks/flops.py), % of the GEMM rate, compile
   seconds and peak RSS; ``--out X.md`` also writes ``X.json`` with every raw run.
PyTorch is skipped, with a note, when it is not installed (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from workloads import WORKLOADS  # noqa: E402

SCRIPTS = {
  "ganjax": "train_step.py",
  "torch": "torch_train_step.py",
  "handwritten": "handwritten_step.py",
}
JAX_FRAMEWORKS = ("ganjax", "handwritten")
TABLE_ORDER = ("ganjax", "handwritten", "torch")


def log(message: str) -> None:
  print(message, flush=True)


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def machine_info() -> dict:
  """CPU model and cores (lscpu), library versions, the date and the git revision."""
  cpu = {}
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
      key, _, value = line.partition(":")
      cpu[key.strip()] = value.strip()
  except (OSError, subprocess.CalledProcessError):
    pass
  try:
    revision = subprocess.run(
      ["git", "describe", "--always", "--dirty"], cwd=HERE, capture_output=True, text=True
    ).stdout.strip()
  except OSError:
    revision = ""
  return {
    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "cpu": cpu.get("Model name", platform.processor()),
    "cpus": os.cpu_count(),
    "cores_per_socket": cpu.get("Core(s) per socket"),
    "sockets": cpu.get("Socket(s)"),
    "threads_per_core": cpu.get("Thread(s) per core"),
    "flags_amx": "amx_bf16" in cpu.get("Flags", ""),
    "python": platform.python_version(),
    **{p: _version(p) for p in ("jax", "jaxlib", "flax", "optax", "torch", "numpy")},
    "git": revision,
    "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    "xla_flags": os.environ.get("XLA_FLAGS"),
  }


def run_json(args: list[str], timeout: float) -> dict:
  """Runs a benchmark script in a fresh subprocess; returns its JSON line or an error record."""
  env = {"TF_CPP_MIN_LOG_LEVEL": "2", **os.environ}
  t0 = time.perf_counter()
  try:
    p = subprocess.run(
      [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env
    )
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout:.0f} s"}
  wall_s = time.perf_counter() - t0
  lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
  if p.returncode or not lines:
    tail = (p.stderr or p.stdout).strip().splitlines()[-5:]
    return {"error": f"exit {p.returncode}: " + " | ".join(tail)}
  return {**json.loads(lines[-1]), "wall_s": wall_s}


def measure_gemm(frameworks: list[str], sizes: str, dtype: str, threads, timeout) -> dict:
  results = {}
  for fw in frameworks:
    args = [os.path.join(HERE, "gemm.py"), "--framework", fw, "--sizes", sizes, "--dtype", dtype]
    if fw == "torch" and threads:
      args += ["--threads", str(threads)]
    r = run_json([*args, "--json"], timeout)
    results[fw] = r
    if "error" in r:
      log(f"  GEMM {fw}: FAILED {r['error']}")
    else:
      log(f"  GEMM {fw}: {r['gflop_per_sec']:.1f} GFLOP/s (n = {r['best_size']})")
  rates = [r["gflop_per_sec"] for r in results.values() if "error" not in r]
  return {"by_framework": results, "machine_gflop_per_sec": max(rates) if rates else None}


def _fmt(values: list[float], digits: int = 1) -> str:
  """'median (min..max)' of a list, or the one value."""
  if not values:
    return "n/a"
  med = statistics.median(values)
  if len(values) == 1:
    return f"{med:.{digits}f}"
  return f"{med:.{digits}f} ({min(values):.{digits}f}..{max(values):.{digits}f})"


def summarize(runs: list[dict], workload: str, framework: str) -> dict | None:
  ok = [
    r
    for r in runs
    if r["workload"] == workload and r["framework"] == framework and "error" not in r
  ]
  if not ok:
    return None
  ips = [r["images_per_sec"] for r in ok]
  compile_s = [r["compile_s"] for r in ok if r.get("compile_s") is not None]
  return {
    "rounds": len(ok),
    "images_per_sec": ips,
    "images_per_sec_median": statistics.median(ips),
    "gflop_per_sec_median": statistics.median(r["gflop_per_sec"] for r in ok),
    "gflop_per_step": ok[0]["gflop_per_step"],
    "compile_s_median": statistics.median(compile_s) if compile_s else None,
    "peak_rss_mib_max": max(r["peak_rss_mib"] for r in ok),
    "threads": ok[0].get("threads"),
    "conv_impl": ok[0].get("conv_impl"),
  }


def markdown(info: dict, gemm: dict, summary: dict, args, frameworks: list[str], notes) -> str:
  """The results as markdown: machine information, GEMM rates and the table."""
  by_fw = gemm["by_framework"]
  gemm_rate = gemm["machine_gflop_per_sec"]

  def rate(fw):
    r = by_fw.get(fw, {})
    return f"{r['gflop_per_sec']:.1f} (n = {r['best_size']})" if "gflop_per_sec" in r else "n/a"

  cores = info["cores_per_socket"]
  if cores and info["sockets"]:
    cores = int(cores) * int(info["sockets"])
  versions = ", ".join(
    f"{p} {info[p]}" for p in ("jax", "jaxlib", "flax", "optax", "torch") if info.get(p)
  )
  lines = [
    f"- date: {info['date']}; git {info['git']}",
    f"- CPU: {info['cpu']}; {cores} cores, {info['cpus']} logical CPUs",
    f"- Python {info['python']}; {versions}",
    f"- dtype {args.dtype}; {args.rounds} rounds x {args.steps} timed steps (+{args.warmup} "
    "warm-up) per run, each run a fresh process",
    f"- {args.dtype} GEMM GFLOP/s: jax {rate('jax')}, torch {rate('torch')}; machine rate "
    + (f"{gemm_rate:.1f}" if gemm_rate else "n/a"),
  ]
  torch_threads = {s["threads"] for (_, fw), s in summary.items() if fw == "torch" and s}
  if torch_threads:
    lines.append(f"- torch threads: {', '.join(map(str, sorted(torch_threads)))}")
  lines += [f"- note: {n}" for n in notes]
  lines.append("")

  def pick(workload, fw, key, fmt="{:.1f}"):
    s = summary.get((workload, fw))
    return fmt.format(s[key]) if s and s.get(key) is not None else "n/a"

  def ratio(workload, a, b):
    sa, sb = summary.get((workload, a)), summary.get((workload, b))
    if not sa or not sb:
      return "n/a"
    return f"{sa['images_per_sec_median'] / sb['images_per_sec_median']:.2f}"

  def percent(workload, fw):
    s = summary.get((workload, fw))
    return f"{100 * s['gflop_per_sec_median'] / gemm_rate:.0f}%" if s and gemm_rate else "n/a"

  header = [
    "workload",
    "GFLOP/step",
    "ganjax img/s",
    "handwritten img/s",
    "torch img/s",
    "ganjax/torch",
    "ganjax/handwritten",
    "GFLOP/s ganjax / hw / torch",
    "% GEMM ganjax / torch",
    "compile s ganjax / hw",
    "peak RSS MiB ganjax / torch",
  ]
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for workload in args.workloads:
    s = {fw: summary.get((workload, fw)) for fw in frameworks}
    any_s = next((v for v in s.values() if v), None)
    ips = {fw: _fmt(v["images_per_sec"]) if v else "n/a" for fw, v in s.items()}
    row = [
      f"{workload} (batch {WORKLOADS[workload].batch})",
      f"{any_s['gflop_per_step']:.2f}" if any_s else "n/a",
      ips.get("ganjax", "n/a"),
      ips.get("handwritten", "n/a"),
      ips.get("torch", "n/a"),
      ratio(workload, "ganjax", "torch"),
      ratio(workload, "ganjax", "handwritten"),
      " / ".join(pick(workload, fw, "gflop_per_sec_median") for fw in TABLE_ORDER),
      f"{percent(workload, 'ganjax')} / {percent(workload, 'torch')}",
      " / ".join(pick(workload, fw, "compile_s_median") for fw in JAX_FRAMEWORKS),
      " / ".join(pick(workload, fw, "peak_rss_mib_max", "{:.0f}") for fw in ("ganjax", "torch")),
    ]
    lines.append("| " + " | ".join(row) + " |")
  impls = {s["conv_impl"] for (_, fw), s in summary.items() if s and s.get("conv_impl")}
  if impls:
    lines.append(f"\nganjax / hand-written DCGAN conv_impl: {', '.join(sorted(impls))}.")
  lines.append(
    "\nimg/s: median of the per-run medians (min..max over rounds). GFLOP/s: "
    "benchmarks/flops.py's count / median step time. % GEMM: of the machine GEMM rate. "
    "PyTorch has no compile step."
  )
  return "\n".join(lines) + "\n"


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated workloads")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps", type=int, default=20, help="timed steps per run")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps per run")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--frameworks", default="ganjax,torch,handwritten", help="run order in a round")
  p.add_argument("--conv_impl", default=None, help="passed to the JAX scripts")
  p.add_argument("--torch_threads", type=int, default=None, help="torch.set_num_threads")
  p.add_argument("--gemm_sizes", default="1024,2048,3072")
  p.add_argument("--timeout", type=float, default=1800, help="seconds per subprocess")
  p.add_argument("--out", default=None, help="write the markdown here, the raw runs beside (.json)")
  args = p.parse_args()
  args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
  unknown = [w for w in args.workloads if w not in WORKLOADS]
  if unknown:
    p.error(f"unknown workloads {unknown}; valid: {', '.join(WORKLOADS)}")
  frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
  if any(f not in SCRIPTS for f in frameworks):
    p.error(f"--frameworks must be among {', '.join(SCRIPTS)}")
  notes = []
  if "torch" in frameworks and importlib.util.find_spec("torch") is None:
    frameworks.remove("torch")
    notes.append("PyTorch is not installed (pip install -e '.[bench]'): torch runs skipped.")
    log(notes[-1])

  info = machine_info()
  log(f"{info['cpu']}, {info['cpus']} CPUs; jax {info['jax']}, torch {info['torch']}")
  log("GEMM rate:")
  gemm_frameworks = ["jax"] + (["torch"] if "torch" in frameworks else [])
  gemm = measure_gemm(
    gemm_frameworks, args.gemm_sizes, args.dtype, args.torch_threads, args.timeout
  )

  runs = []
  for workload in args.workloads:
    for round_index in range(args.rounds):
      for fw in frameworks:
        cmd = [
          os.path.join(HERE, SCRIPTS[fw]),
          "--workload",
          workload,
          "--steps",
          str(args.steps),
          "--warmup",
          str(args.warmup),
          "--dtype",
          args.dtype,
          "--json",
        ]
        if fw in JAX_FRAMEWORKS and args.conv_impl:
          cmd += ["--conv_impl", args.conv_impl]
        if fw == "torch" and args.torch_threads:
          cmd += ["--threads", str(args.torch_threads)]
        r = run_json(cmd, args.timeout)
        r.update(workload=workload, framework=fw, round=round_index)
        runs.append(r)
        if "error" in r:
          log(f"  {workload} round {round_index + 1} {fw}: FAILED {r['error']}")
        else:
          compiled = f", compile {r['compile_s']:.1f} s" if r.get("compile_s") else ""
          log(
            f"  {workload} round {round_index + 1}/{args.rounds} {fw}: "
            f"{r['images_per_sec']:.1f} img/s ({r['step_ms_median']:.1f} ms/step, "
            f"{r['gflop_per_sec']:.1f} GFLOP/s{compiled})"
          )

  summary = {(w, fw): summarize(runs, w, fw) for w in args.workloads for fw in frameworks}
  notes += [
    f"{r['workload']} {r['framework']} round {r['round'] + 1} failed: {r['error'][:300]}"
    for r in runs
    if "error" in r
  ]
  table = markdown(info, gemm, summary, args, frameworks, notes)
  print("\n" + table, flush=True)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      f.write(table)
    raw = os.path.splitext(args.out)[0] + ".json"
    with open(raw, "w") as f:
      json.dump(
        {
          "machine": info,
          "args": vars(args),
          "gemm": gemm,
          "summary": {f"{w}/{fw}": s for (w, fw), s in summary.items()},
          "runs": runs,
        },
        f,
        indent=1,
      )
    log(f"wrote {args.out} and {raw}")


if __name__ == "__main__":
  main()
