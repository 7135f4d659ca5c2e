r"""The 2-D mode-collapse study: every method of configs/gaussian_mixture.py on ring and grid.

  python experiments/mode_collapse_2d/run.py                      # 8 methods x 2 datasets x 5 seeds
  python experiments/mode_collapse_2d/run.py --seeds 1 --methods gan,pacgan2 --datasets ring

Each run is ``python -m ganjax.main --config=configs/gaussian_mixture.py:dataset=D,method=M
--config.seed=S --workdir=OUT/runs/D/M/seed_S`` in its own process, pinned to one CPU core
(``taskset``) so that ``--jobs`` runs (default: one per core) do not share a core; its wall time
is measured around the process (start-up and compilation included). A run whose workdir already
holds its final evaluation is not run again, so an interrupted study resumes.

Outputs in ``--out`` (default: this folder):
* ``results.json``: every run (dataset, method, seed, modes, hq_fraction, reverse_kl, wall_s);
* ``results.md``: the protocol, a table of mean ± std over seeds, and the published reference;
* ``scatter_ring.png``, ``scatter_grid.png``: the final samples of seed 0 of every method.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CONFIG = os.path.join(REPO, "configs", "gaussian_mixture.py")

# Published reference: Lin et al. 2018 (PacGAN), Table 1 (10 trials).
PUBLISHED = {
  ("ring", "gan"): "6.3 modes, 98.2 % HQ, rev-KL 0.45",
  ("ring", "pacgan2"): "7.9 modes, 95.6 % HQ, rev-KL 0.07",
  ("grid", "gan"): "17.3 modes, 94.8 % HQ, rev-KL 0.70",
  ("grid", "pacgan4"): "24.8 modes, 93.6 % HQ, rev-KL 0.04",
}
TARGETS = {"ring": (8, 0.97), "grid": (25, 0.95)}


def _load_methods() -> tuple[str, ...]:
  spec = importlib.util.spec_from_file_location("gaussian_mixture_config", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.METHODS, module


def final_evaluation(workdir: str, num_steps: int) -> dict | None:
  """The evaluation line of the last step in ``workdir/metrics.jsonl``, or None."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  rows = [r for r in rows if "modes" in r and r["step"] == num_steps]
  return rows[-1] if rows else None


def run_one(out: str, dataset: str, method: str, seed: int, core: int | None, num_steps: int):
  """Trains one run (unless it is done) and returns its record."""
  workdir = os.path.join(out, "runs", dataset, method, f"seed_{seed}")
  record_path = os.path.join(workdir, "study_record.json")
  if os.path.exists(record_path) and final_evaluation(workdir, num_steps):
    with open(record_path) as f:
      return json.load(f)
  shutil.rmtree(workdir, ignore_errors=True)
  os.makedirs(workdir)
  command = [
    sys.executable,
    "-m",
    "ganjax.main",
    f"--config={CONFIG}:dataset={dataset},method={method}",
    f"--config.seed={seed}",
    f"--workdir={workdir}",
  ]
  if core is not None and shutil.which("taskset"):
    command = ["taskset", "-c", str(core), *command]
  start = time.time()
  with open(os.path.join(workdir, "log.txt"), "w") as log:
    result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
  wall = time.time() - start
  evaluation = final_evaluation(workdir, num_steps)
  if result.returncode or evaluation is None:
    raise RuntimeError(f"{dataset}/{method}/seed {seed} failed; see {workdir}/log.txt")
  record = {
    "dataset": dataset,
    "method": method,
    "seed": seed,
    "modes": evaluation["modes"],
    "hq_fraction": evaluation["hq_fraction"],
    "reverse_kl": evaluation["reverse_kl"],
    "steps": num_steps,
    "wall_s": round(wall, 1),
  }
  with open(record_path, "w") as f:
    json.dump(record, f)
  print(
    f"{dataset:5s} {method:25s} seed {seed}: {record['modes']:2d} modes, "
    f"{100 * record['hq_fraction']:5.1f} % HQ, rev-KL {record['reverse_kl']:.3f}, {wall:.0f} s",
    flush=True,
  )
  return record


def _mean_std(values: list[float], fmt: str) -> str:
  mean = statistics.fmean(values)
  std = statistics.stdev(values) if len(values) > 1 else 0.0
  return f"{mean:{fmt}} ± {std:{fmt}}"


def markdown(records: list[dict], methods, datasets, protocol: str, machine: str) -> str:
  lines = [
    "# 2-D mode-collapse study (ring and grid of Gaussians)",
    "",
    f"Measured {datetime.date.today().isoformat()} on {machine}; rerun with "
    "`python experiments/mode_collapse_2d/run.py` (results.json holds every run).",
    "",
    "## Protocol",
    "",
    protocol,
    "",
    "## Results (mean ± std over seeds)",
    "",
  ]
  for dataset in datasets:
    target_modes, target_hq = TARGETS[dataset]
    lines += [
      f"### {dataset} (target: {target_modes} modes, ≥ {100 * target_hq:.0f} % HQ, "
      "each run ≤ 3 min)",
      "",
      "| method | seeds | steps | modes | % high quality | reverse KL | wall time (s) | "
      "published (PacGAN Table 1) |",
      "|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
      rows = [r for r in records if r["dataset"] == dataset and r["method"] == method]
      if not rows:
        continue
      lines.append(
        f"| {method} | {len(rows)} | {rows[0].get('steps', '')} | "
        f"{_mean_std([r['modes'] for r in rows], '.1f')} | "
        f"{_mean_std([100 * r['hq_fraction'] for r in rows], '.1f')} | "
        f"{_mean_std([r['reverse_kl'] for r in rows], '.3f')} | "
        f"{_mean_std([r['wall_s'] for r in rows], '.0f')} | "
        f"{PUBLISHED.get((dataset, method), '')} |"
      )
    lines += ["", f"![final samples, seed 0](scatter_{dataset}.png)", ""]
  return "\n".join(lines)


def protocol_text(config_module) -> str:
  config = config_module.get_config("dataset=ring,method=gan")
  g, d = config.model.generator, config.model.discriminator
  steps = ", ".join(f"{m} {n}" for m, n in config_module.STEPS.items())
  return "\n".join(
    [
      "- Data: ring = 8 Gaussians on a circle of radius 1, sigma 0.01; grid = 25 Gaussians at "
      "{-4, -2, 0, 2, 4}^2, sigma 0.05 (fresh samples every step).",
      f"- Generator: MLP, latent N(0, I) of dim {config.model.latent_dim}, hidden "
      f"{tuple(g.hidden)}, LeakyReLU({g.leaky_slope}), BatchNorm {g.batch_norm}, linear "
      "output.",
      f"- Discriminator: MLP, hidden {tuple(d.hidden)}, "
      + (
        f"maxout units of {d.maxout_pieces} pieces"
        if d.maxout_pieces > 1
        else f"LeakyReLU({d.leaky_slope})"
      )
      + (f", N(0, {d.kernel_init_std}^2) kernels" if d.kernel_init_std else "")
      + ", no dropout; methods change it as `configs/gaussian_mixture.py` documents.",
      f"- Training: {config.num_train_steps} generator steps (the costlier methods train for "
      f"fewer so that each run stays within 3 minutes on one core: {steps}), batch "
      f"{config.batch_size} "
      f"(PacGAN3: {config.batch_size - config.batch_size % 3}), objective "
      f"{config.loss.name}, Adam(lr {config.optim.g.learning_rate}, b1 {config.optim.g.b1}, "
      f"b2 {config.optim.g.b2}) for both, learning-rate schedule "
      f"{config.optim.g.get('schedule', 'constant')}, generator EMA {config.ema.decay} "
      "(evaluated on the EMA weights when it is on). WGAN-GP: n_critic 5, Adam b2 0.9, "
      "gradient penalty 10.",
      f"- Evaluation (Srivastava et al. 2017; Lin et al. 2018): {config.eval_num_samples} "
      "samples of the final generator; a sample is high quality (HQ) within 3 sigma of its "
      "nearest mode; modes = modes nearest to at least one HQ sample; reverse KL = KL(HQ "
      "samples' mode histogram || uniform).",
      "- Each run is one process pinned to one core (two runs in parallel on the 2-core "
      "machine); wall time includes start-up and compilation.",
    ]
  )


def scatter_figure(out: str, dataset: str, methods) -> str | None:
  """One panel per method: seed 0's final samples over the mixture's modes."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  from ganjax.data import gaussian_mixture
  from ganjax.systems import gan

  panels = []
  for method in methods:
    workdir = os.path.join(out, "runs", dataset, method, "seed_0")
    if os.path.exists(os.path.join(workdir, "checkpoints")):
      npz = os.path.join(workdir, "final_samples.png")
      points = gan.sample_from_workdir(workdir, 2500, npz)
      panels.append((method, np.asarray(points)))
  if not panels:
    return None
  modes = gaussian_mixture.mixture_modes(dataset)
  limit = 1.5 if dataset == "ring" else 6.0
  cols = min(4, len(panels))
  rows = (len(panels) + cols - 1) // cols
  fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), dpi=100, squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, (method, points) in zip(axes.flat, panels, strict=False):
    ax.axis("on")
    ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.4, c="tab:blue")
    ax.scatter(modes[:, 0], modes[:, 1], s=20, c="tab:orange", marker="x")
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(method, fontsize=9)
  fig.suptitle(f"{dataset}: 2,500 samples of seed 0 (x = modes)", fontsize=10)
  fig.tight_layout()
  path = os.path.join(out, f"scatter_{dataset}.png")
  fig.savefig(path)
  plt.close(fig)
  return path


def main(argv=None) -> int:
  methods_all, config_module = _load_methods()
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=HERE)
  parser.add_argument("--datasets", default="ring,grid")
  parser.add_argument("--methods", default=",".join(methods_all))
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
  parser.add_argument("--note", default="", help="a remark added under the protocol")
  parser.add_argument(
    "--collect_only",
    action="store_true",
    help="run nothing: make the table and plots from the finished runs in --out",
  )
  args = parser.parse_args(argv)
  datasets = [d for d in args.datasets.split(",") if d]
  methods = [m for m in args.methods.split(",") if m]
  for name, valid, given in (("dataset", TARGETS, datasets), ("method", methods_all, methods)):
    bad = [x for x in given if x not in valid]
    if bad:
      parser.error(f"unknown {name}(s) {bad}; valid: {', '.join(valid)}")
  # Seeds outermost: an interrupted study has every method for its first seeds.
  jobs = [(d, m, s) for s in range(args.seeds) for d in datasets for m in methods]
  cores = list(range(max(1, args.jobs)))
  records, failures = [], []
  if args.collect_only:
    for d, m, s in jobs:
      path = os.path.join(args.out, "runs", d, m, f"seed_{s}", "study_record.json")
      if os.path.exists(path):
        with open(path) as f:
          records.append(json.load(f))
    jobs = []
  with concurrent.futures.ThreadPoolExecutor(len(cores)) as pool:
    free = list(cores)
    futures = {}
    pending = list(jobs)
    while pending or futures:
      while pending and free:
        core = free.pop(0)
        d, m, s = pending.pop(0)
        num_steps = config_module.get_config(f"dataset={d},method={m}").num_train_steps
        futures[pool.submit(run_one, args.out, d, m, s, core, num_steps)] = core
      done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
      for future in done:
        free.append(futures.pop(future))
        try:
          records.append(future.result())
        except RuntimeError as e:  # One failed run (e.g. NaN) does not stop the study.
          failures.append(str(e))
          print(e, flush=True)
  records.sort(key=lambda r: (r["dataset"], methods_all.index(r["method"]), r["seed"]))
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(records, f, indent=1)
  for dataset in datasets:
    scatter_figure(args.out, dataset, methods)
  machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
  try:
    with open("/proc/cpuinfo") as f:
      model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    machine = f"{model}, {os.cpu_count()} cores, CPU only"
  except (OSError, StopIteration):
    pass
  protocol = protocol_text(config_module) + (f"\n\n{args.note}" if args.note else "")
  text = markdown(records, methods, datasets, protocol, machine)
  if failures:
    text += "\n## Failed runs\n\n" + "\n".join(f"- {f}" for f in failures) + "\n"
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(text + "\n")
  print(text)
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
