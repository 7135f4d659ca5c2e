"""The results of a sweep: ``collect(sweep_workdir)`` writes ``results.json``, ``results.md`` and
``curves/<metric>.png`` from the runs' files on disk.

A row per group (runs that differ only in their seed): for each evaluation metric the mean and
sample standard deviation (ddof=1) over the group's finished seeds of the run's final evaluation
(its last evaluated step), the best value of the mean over seeds during training and its step, the
number of finished seeds and the wall time. Failed and unfinished runs are listed under the table;
a metric a run did not evaluate is missing (null, "—"), never zero. Each metric's protocol (its
definition and how the runs measured it, from their ``config.json`` and ``eval/step_N.json``) is
stated above the tables.

Reads, for each run ``SWEEP_WORKDIR/runs/<name>/``: ``sweep_run.json`` (wall_s, job_id, error;
the state as ``--status`` classifies it, :func:`ganjax.sweep.status.classify`, without asking the
scheduler), ``config.json``, the evaluation records of ``metrics.jsonl`` (the lines without the
``steps_per_sec`` of a training log line, :func:`ganjax.loop.run`) and ``eval/step_N.json``
(:func:`ganjax.evaluation.save_evaluation`). The run list and groups come from
``SWEEP_WORKDIR/sweep.json``, else from the folders in ``runs/`` (group: the name without its
``seed=N`` part; a workdir without ``sweep_run.json`` counts as finished when it logged its last
step).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import re
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

from ganjax import checkpoint, loop
from ganjax import workdir as workdir_lib
from ganjax.evaluation import metric_table
from ganjax.sweep import status
from ganjax.sweep.spec import group_of

SWEEP_FILE = status.SWEEP_FILE
RUNS_DIR = status.RUNS_DIR
RUN_FILE = status.RUN_FILE
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
CURVES_DIR = "curves"
FINISHED = status.FINISHED
MISSING = "—"

# What each metric is (ganjax/evaluation/metric_table.py, ganjax/metrics/, ganjax/systems/).
DEFINITIONS = {
  "fid": "Fréchet distance between Gaussians fitted to the Inception pool3 features of generated "
  "and real images (Heusel et al. 2017)",
  "classifier_fid": "Fréchet distance of the domain classifier's features (not comparable to FID)",
  "kid": "kernel Inception distance: unbiased MMD² with the kernel (x·y/D + 1)³, mean over "
  f"{metric_table.KID_SUBSETS} subsets of up to {metric_table.KID_SUBSET_SIZE} "
  "(Bińkowski et al. 2018)",
  "kid_std": "standard deviation of KID over its subsets",
  "is": "Inception Score exp(E KL(p(y|x) ‖ p(y))) of the extractor's class probabilities "
  "(Salimans et al. 2016)",
  "is_std": "standard deviation of the Inception Score over its 10 splits",
  "precision": "fraction of generated samples inside the k-NN balls of the real features, "
  f"k = {metric_table.PRECISION_RECALL_K} (Kynkäänniemi et al. 2019)",
  "recall": "fraction of real samples inside the k-NN balls of the generated features, "
  f"k = {metric_table.PRECISION_RECALL_K} (Kynkäänniemi et al. 2019)",
  "density": "real k-NN balls holding each generated sample, averaged and divided by k "
  f"(1 for matching distributions), k = {metric_table.DENSITY_COVERAGE_K} (Naeem et al. 2020)",
  "coverage": "fraction of real k-NN balls holding a generated sample, "
  f"k = {metric_table.DENSITY_COVERAGE_K} (Naeem et al. 2020)",
  "stacked_mnist_modes": "distinct digit triples (of 1000) the classifier reads in the generated "
  "Stacked MNIST samples (Metz et al. 2017)",
  "stacked_mnist_reverse_kl": "KL(generated digit-triple histogram ‖ uniform over 1000), nats",
  "intra_class_fid": "Fréchet distance per class, averaged over the classes (conditional)",
  "modes": "mixture components nearest to at least one high-quality sample (within 3 sigma of "
  "its nearest mode; Srivastava et al. 2017, Lin et al. 2018)",
  "hq_fraction": "fraction of samples within 3 sigma of their nearest mode (a perfect generator "
  "scores 0.989)",
  "reverse_kl": "KL(mode histogram of the high-quality samples ‖ uniform), nats, in [0, log K]; "
  "inf when no sample is high quality (Lin et al. 2018)",
  "psnr": "PSNR (dB) of the super-resolved against the HR images, RGB, data range 255",
  "psnr_y": "PSNR (dB) on the ITU-R BT.601 luma",
  "ssim": "SSIM (Wang et al. 2004), 11x11 Gaussian window, sigma 1.5",
  "sharpness": "mean luma gradient magnitude of the output / of the HR images (1 = HR's)",
  "psnr_gain_over_bicubic": "psnr minus the bicubic upsampling's psnr (dB)",
}
_MIXTURE_METRICS = ("modes", "hq_fraction", "reverse_kl")


def direction(metric: str) -> str | None:
  """``"higher"`` or ``"lower"`` (is better), as ``eval_best_metric`` compares them
  (:data:`ganjax.checkpoint.HIGHER_IS_BETTER`); None for numbers that rank nothing: the spread
  of an estimate (``*_std``), the bicubic baseline (``bicubic_*``), ``sharpness`` (best near 1)."""
  if metric.endswith("_std") or metric.startswith("bicubic_") or metric == "sharpness":
    return None
  return "higher" if metric in checkpoint.HIGHER_IS_BETTER else "lower"


def definition(metric: str) -> str:
  if metric.startswith("bicubic_"):
    base = metric[len("bicubic_") :]
    return f"{base} of bicubic upsampling (the baseline): {DEFINITIONS.get(base, base)}"
  return DEFINITIONS.get(metric, "see ganjax/evaluation/metric_table.py")


# ----------------------------------------------------------------------------------------------
# Reading the runs.


@dataclasses.dataclass
class RunRecord:
  """What collect reads of one run's workdir."""

  name: str
  group: str
  path: str
  state: str  # As --status tells it (ganjax.sweep.status.classify).
  error: str | None = None  # The run's error, or why its state is what it is.
  wall_s: float | None = None
  job_id: str | None = None
  config: dict[str, Any] | None = None
  evaluations: dict[int, dict[str, float]] = dataclasses.field(default_factory=dict)
  protocols: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)

  @property
  def final_step(self) -> int | None:
    return max(self.evaluations) if self.evaluations else None

  @property
  def final(self) -> dict[str, float]:
    return self.evaluations[self.final_step] if self.evaluations else {}


_read_json = workdir_lib.read_json_or_none


def run_list(sweep_workdir: str) -> tuple[list[tuple[str, str]], dict[str, Any]]:
  """``([(name, group)], sweep.json)``: the runs of ``sweep.json`` in its order, else the folders
  of ``runs/`` sorted."""
  sweep = _read_json(os.path.join(sweep_workdir, SWEEP_FILE)) or {}
  if sweep.get("runs"):
    runs = [(r["name"], r.get("group", group_of(r["name"]))) for r in sweep["runs"]]
    return runs, sweep
  runs_dir = os.path.join(sweep_workdir, RUNS_DIR)
  names = sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else []
  names = [n for n in names if os.path.isdir(os.path.join(runs_dir, n))]
  return [(n, group_of(n)) for n in names], sweep


def read_evaluations(path: str) -> tuple[dict[int, dict[str, float]], dict[int, dict]]:
  """:func:`ganjax.workdir.read_evaluations` of the run in ``path``."""
  return workdir_lib.read_evaluations(path)


def read_run(
  sweep_workdir: str, name: str, group: str, sweep: Mapping[str, Any] | None = None
) -> RunRecord:
  """One run's state (as ``--status`` tells it from its ``sweep_run.json`` and its latest job in
  ``sweep``, without asking the scheduler), wall time, config and evaluations."""
  path = os.path.join(sweep_workdir, RUNS_DIR, name)
  marker = status.read_marker(path)
  config = _read_json(os.path.join(path, "config.json"))
  evaluations, protocols = read_evaluations(path)
  last, total = status.read_progress(path).step, (config or {}).get("num_train_steps")
  if marker is None and last is not None and total is not None and last >= total:
    state, reason = FINISHED, None  # Trained outside the sweep runner, to its last step.
  else:
    state, reason = status.classify(marker, status.latest_job(sweep, name), None)
  marker = marker or {}
  wall = marker.get("wall_s")
  return RunRecord(
    name=name,
    group=group,
    path=path,
    state=state,
    error=marker.get("error") or reason,
    wall_s=float(wall) if isinstance(wall, int | float) else None,
    job_id=None if marker.get("job_id") is None else str(marker["job_id"]),
    config=config,
    evaluations=evaluations,
    protocols=protocols,
  )


# ----------------------------------------------------------------------------------------------
# Statistics over seeds.


def mean_std(values: Iterable[float | None]) -> dict[str, Any]:
  """``{"mean", "std", "n"}`` of the values present: the sample standard deviation (ddof=1),
  None with one value; mean None with none. Non-finite values (e.g. reverse_kl = inf) make the
  mean non-finite and the std None, and are counted in ``"non_finite"``."""
  present = [float(v) for v in values if v is not None]
  if not present:
    return {"mean": None, "std": None, "n": 0}
  non_finite = sum(not math.isfinite(v) for v in present)
  if non_finite:
    mean = sum(present) / len(present)
    return {"mean": mean, "std": None, "n": len(present), "non_finite": non_finite}
  std = statistics.stdev(present) if len(present) > 1 else None
  return {"mean": statistics.fmean(present), "std": std, "n": len(present)}


def curve(runs: list[RunRecord], metric: str) -> dict[str, list]:
  """The metric over training steps: mean, min and max over the runs with a finite value."""
  steps = sorted({s for r in runs for s, v in r.evaluations.items() if metric in v})
  out: dict[str, list] = {"steps": [], "mean": [], "min": [], "max": [], "n": []}
  for step in steps:
    values = [r.evaluations.get(step, {}).get(metric) for r in runs]
    values = [v for v in values if v is not None and math.isfinite(v)]
    if values:
      for key, value in zip(
        out, (step, statistics.fmean(values), min(values), max(values), len(values)), strict=True
      ):
        out[key].append(value)
  return out


def best(runs: list[RunRecord], metric: str) -> dict[str, Any] | None:
  """The best mean over seeds during training and its step, among the steps where every run has
  a value (so that no step wins by missing a seed; an inf value makes its step's mean inf, the
  worst of a lower-is-better metric); with the std there and each run's own best
  ``{value, step}``. None when the metric has no direction or no such step."""
  better = direction(metric)
  if better is None or not runs:
    return None
  sign = 1.0 if better == "higher" else -1.0
  found = None
  for step in sorted({s for r in runs for s in r.evaluations}):
    values = [r.evaluations.get(step, {}).get(metric) for r in runs]
    if any(v is None for v in values):
      continue
    stats = mean_std(values)
    if not math.isnan(stats["mean"]) and (
      found is None or sign * stats["mean"] > sign * found["mean"]
    ):
      found = {"step": step, **stats}
  if found is None:
    return None
  per_run = {}
  for r in runs:
    scored = [
      (v[metric], s) for s, v in r.evaluations.items() if not math.isnan(v.get(metric, math.nan))
    ]
    if scored:
      value, step = max(scored, key=lambda vs: (sign * vs[0], -vs[1]))
      per_run[r.name] = {"value": value, "step": step}
  return {**found, "per_run": per_run}


def summarize_group(name: str, runs: list[RunRecord], metrics: list[str]) -> dict[str, Any]:
  """A table row: final values, best values, curves and wall time over the finished runs."""
  done = [r for r in runs if r.state == FINISHED]
  final = {}
  for metric in metrics:
    values = {r.name: r.final.get(metric) for r in done}
    final[metric] = {**mean_std(values.values()), "values": values}
  steps = sorted({r.final_step for r in done if r.final_step is not None})
  return {
    "name": name,
    "runs": [r.name for r in runs],
    "num_runs": len(runs),
    "num_seeds": len(done),
    "final_steps": steps,
    "final": final,
    "best": {m: best(done, m) for m in metrics},
    "wall_s": mean_std(r.wall_s for r in done),
    "curves": {m: curve(done, m) for m in metrics},
  }


# ----------------------------------------------------------------------------------------------
# The evaluation protocol of each metric.


def _every(config: Mapping[str, Any]) -> str:
  every = config.get("eval_every_steps") or 0
  return f"every {every} steps and at the end" if every else "at the end of training"


def _generator(config: Mapping[str, Any], protocol: Mapping[str, Any]) -> str:
  if "generator" in protocol:
    return "EMA" if protocol["generator"] == "ema" else "raw"
  return "EMA" if (config.get("ema") or {}).get("decay", 0) > 0 else "raw"


def run_protocol(metric: str, run: RunRecord) -> str:
  """How ``run`` measured ``metric``: samples, data, extractor, generator, cadence."""
  config = run.config or {}
  step = max((s for s in run.protocols if metric in run.evaluations.get(s, {})), default=None)
  protocol = run.protocols.get(step, {}) if step is not None else {}
  if "num_generated" in protocol:  # An image evaluation (ganjax.evaluation).
    ref = protocol.get("reference") or {}
    parts = [
      f"{protocol['num_generated']} samples of the {_generator(config, protocol)} generator "
      f"against {protocol.get('num_real')} real ({ref.get('dataset')} {ref.get('split')}, "
      f"{ref.get('resolution')})",
      f"{protocol.get('extractor')} features ({protocol.get('weights')}, resize "
      f"{protocol.get('resize')})",
    ]
  elif "images" in protocol:  # Super-resolution (ganjax.systems.srgan).
    parts = [str(protocol["images"]), str(protocol.get("border", ""))]
  elif metric in _MIXTURE_METRICS:
    data = (config.get("data") or {}).get("name")
    parts = [
      f"{config.get('eval_num_samples')} samples of the {_generator(config, protocol)} generator "
      f"on fixed latents, {data} mixture"
    ]
  else:
    parts = [f"eval_num_samples {config.get('eval_num_samples')}"]
  return "; ".join([p for p in parts if p] + [_every(config)])


def protocol_lines(metrics: list[str], runs: list[RunRecord]) -> dict[str, list[str]]:
  """Per metric: one line per distinct protocol among the finished runs (with the groups it
  applies to when the runs differ)."""
  out = {}
  for metric in metrics:
    variants: dict[str, list[str]] = {}
    for run in runs:
      if run.state == FINISHED and any(metric in v for v in run.evaluations.values()):
        groups = variants.setdefault(run_protocol(metric, run), [])
        if (run.group or "(all runs)") not in groups:
          groups.append(run.group or "(all runs)")
    if len(variants) <= 1:
      out[metric] = list(variants)
    else:
      out[metric] = [f"{p} (groups: {', '.join(g)})" for p, g in variants.items()]
  return out


# ----------------------------------------------------------------------------------------------
# Writing: results.json, results.md, curves/*.png.


def _decimals(mean: float, std: float | None) -> int:
  """Decimals (1 to 6): two significant digits of the std; without a spread, about four of the
  mean (one for a whole number)."""
  if std is not None and std > 0 and math.isfinite(std):
    return min(6, max(1, 1 - math.floor(math.log10(std))))
  if mean == 0 or not math.isfinite(mean) or mean == round(mean):
    return 1
  return min(6, max(1, 3 - math.floor(math.log10(abs(mean)))))


def column_decimals(cells: Iterable[Mapping[str, Any] | None]) -> int:
  """The decimals of a table column: the most that a cell with a spread needs; without spreads,
  the most that the means need."""
  cells = [c for c in cells if c and c.get("mean") is not None and math.isfinite(c["mean"])]
  spread = [_decimals(c["mean"], c["std"]) for c in cells if c.get("std")]
  return max(spread or [_decimals(c["mean"], None) for c in cells] or [1])


def format_stats(
  stats: Mapping[str, Any] | None, expected_n: int | None = None, digits: int | None = None
) -> str:
  """``"mean ± std"``; ``"value (n=1)"`` with one seed; ``"—"`` with none; ``" (n=k)"`` added
  when fewer than ``expected_n`` seeds have the value. ``digits``: decimals (default: two
  significant digits of the std)."""
  if not stats or stats.get("mean") is None:
    return MISSING
  mean, std, n = stats["mean"], stats.get("std"), stats.get("n", 0)
  digits = _decimals(mean, std) if digits is None else digits
  text = f"{mean:.{digits}f}"
  if std is not None:
    text += f" ± {std:.{digits}f}"
  if stats.get("non_finite"):
    text += f" ({stats['non_finite']} of {n} non-finite)"
  if n == 1 or (expected_n is not None and n < expected_n):
    text += f" (n={n})"
  return text


def _step_range(steps: list[int]) -> str:
  if not steps:
    return MISSING
  return str(steps[0]) if len(steps) == 1 else f"{steps[0]}–{steps[-1]}"


def _cell(text: str) -> str:
  return text.replace("|", "\\|")


def _arrow(metric: str) -> str:
  return {"higher": " ↑", "lower": " ↓"}.get(direction(metric) or "", "")


def table_metrics(metrics: list[str]) -> list[str]:
  """The metrics of the tables and figures: all but the spread of an estimate (``kid_std``,
  ``is_std``, kept in results.json)."""
  return [m for m in metrics if not m.endswith("_std")]


def markdown(result: Mapping[str, Any]) -> str:
  """results.md: protocol, the final and best tables, the runs outside them, the figures."""
  metrics = table_metrics(list(result["metrics"]))
  groups = result["groups"]
  counts = result["counts"]
  states = ", ".join(f"{n} {state}" for state, n in counts["states"].items())
  lines = [
    f"# Results of {result['sweep'] or result['sweep_workdir']}",
    "",
    f"Collected {result['collected_at']} from `{result['sweep_workdir']}`: "
    f"{counts['runs']} runs in {len(groups)} group(s)" + (f" ({states})." if states else "."),
    "",
    "Each cell is the mean ± the sample standard deviation (ddof=1) over the group's finished "
    "seeds; `(n=1)`: a single seed, no spread; `(n=k)`: only k of the seeds have the value; "
    f"`{MISSING}`: not evaluated. ↑ / ↓: higher / lower is better.",
    "",
    "## Evaluation protocol",
    "",
  ]
  if not metrics:
    lines.append("No run has an evaluation yet.")
  for metric in metrics:
    info = result["metrics"][metric]
    better = f", {info['direction']} is better" if info["direction"] else ""
    lines.append(f"- **{metric}**{better}: {definition(metric)}.")
    lines += [f"  - {line}." for line in info["protocol"]]
  lines += ["", "## Final evaluation (the last evaluated step of each run)", ""]
  header = ["group", "seeds", "step", *(m + _arrow(m) for m in metrics), "wall time (s)"]
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  digits = {m: column_decimals(g["final"][m] for g in groups) for m in metrics}
  for g in groups:
    n = g["num_seeds"]
    cells = [
      g["name"] or "(all runs)",
      f"{n}/{g['num_runs']}" if n != g["num_runs"] else str(n),
      _step_range(g["final_steps"]),
      *(format_stats(g["final"][m], n, digits[m]) for m in metrics),
      _wall(g["wall_s"]),
    ]
    lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
  ranked = [m for m in metrics if direction(m)]
  if ranked:
    lines += ["", "## Best over training (best mean over seeds @ its step)", ""]
    header = ["group", *(m + _arrow(m) for m in ranked)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    digits = {m: column_decimals(g["best"][m] for g in groups) for m in ranked}
    for g in groups:
      cells = [g["name"] or "(all runs)"]
      for m in ranked:
        b = g["best"][m]
        cells.append(MISSING if b is None else f"{format_stats(b, None, digits[m])} @ {b['step']}")
      lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
  lines += _not_in_table(result["runs"])
  if result["figures"]:
    lines += ["", "## Curves (mean over seeds, band: min to max)", ""]
    lines += [f"![{m}]({path})" for m, path in result["figures"].items()]
  return "\n".join(lines) + "\n"


def _wall(stats: Mapping[str, Any]) -> str:
  if stats["mean"] is None:
    return MISSING
  text = f"{stats['mean']:.0f}" + (f" ± {stats['std']:.0f}" if stats["std"] is not None else "")
  return text + (" (n=1)" if stats["n"] == 1 else "")


def _not_in_table(runs: list[Mapping[str, Any]]) -> list[str]:
  others = [r for r in runs if r["state"] != FINISHED]
  if not others:
    return []
  lines = ["", f"## Runs not in the tables ({len(others)})", ""]
  for r in others:
    error = (r.get("error") or "").strip().splitlines()
    reason = f": {error[-1][:300]}" if error else ""
    job = f" (job {r['job_id']})" if r.get("job_id") else ""
    lines.append(f"- `{r['name']}`: {r['state']}{job}{reason}")
  return lines


def _figure_name(metric: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]", "_", metric) + ".png"


# Groups drawn in one panel of a curve figure; more are split into panels (:func:`panels`).
GROUPS_PER_PANEL = 8


def _name_parts(name: str) -> dict[str, str] | None:
  """``"a=1,b=x"`` -> ``{"a": "1", "b": "x"}``; None when a part is not ``key=value``."""
  parts = [p.partition("=") for p in name.split(",")] if name else []
  if not parts or any(not sep for _, sep, _ in parts):
    return None
  return {k: v for k, _, v in parts}


def panels(names: list[str]) -> list[tuple[str, list[int]]]:
  """Splits the groups of a figure into panels of at most :data:`GROUPS_PER_PANEL`: by the value
  of the override with the fewest values that achieves it (e.g. one panel per dataset; not one
  that differs in every group), else in order. Returns ``[(panel title, group indices)]``."""
  if len(names) <= GROUPS_PER_PANEL:
    return [("", list(range(len(names))))]
  parsed = [_name_parts(n) for n in names]
  if all(parsed):
    choices = []
    for key in parsed[0]:
      if all(key in p for p in parsed):
        values = list(dict.fromkeys(p[key] for p in parsed))
        largest = max(sum(p[key] == v for p in parsed) for v in values)
        if 1 < len(values) < len(names) and largest <= GROUPS_PER_PANEL:
          choices.append((len(values), key, values))
    if choices:
      _, key, values = min(choices, key=lambda c: c[0])
      return [(f"{key}={v}", [i for i, p in enumerate(parsed) if p[key] == v]) for v in values]
  chunks = range(0, len(names), GROUPS_PER_PANEL)
  return [
    (
      f"groups {i + 1}-{min(i + GROUPS_PER_PANEL, len(names))}",
      list(range(i, i + GROUPS_PER_PANEL))[: len(names) - i],
    )
    for i in chunks
  ]


def _label(name: str, panel: str) -> str:
  """The group's name in a panel's legend, without the part the panel title states."""
  if panel and "=" in panel:
    name = ",".join(p for p in name.split(",") if p != panel)
  return name or "(all runs)"


def _draw_group(ax, group: Mapping[str, Any], metric: str, label: str, color) -> bool:
  """A group's mean line and min-max band; hollow markers where seeds miss a value. Returns
  whether it drew such a marker."""
  c = group["curves"][metric]
  marker = "o" if len(c["steps"]) <= 30 else None
  label = f"{label} (n={max(c['n'])})"
  ax.plot(c["steps"], c["mean"], color=color, marker=marker, ms=3, lw=1.5, label=label)
  ax.fill_between(c["steps"], c["min"], c["max"], color=color, alpha=0.15, lw=0)
  steps_n = zip(c["steps"], c["mean"], c["n"], strict=True)
  partial = [(s, m) for s, m, k in steps_n if k < group["num_seeds"]]
  if partial:
    ax.scatter(*zip(*partial, strict=True), s=40, facecolors="white", edgecolors=color, zorder=3)
  return bool(partial)


def plot_curve(metric: str, groups: list[Mapping[str, Any]], path: str) -> bool:
  """One metric over training steps: a line per group (mean over seeds) with its min-max band,
  in panels of at most :data:`GROUPS_PER_PANEL` groups. Returns False (and writes nothing) when
  no group has a value."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker

  drawn = [g for g in groups if g["curves"][metric]["steps"]]
  if not drawn:
    return False
  layout = panels([g["name"] for g in drawn])
  fig, axes = plt.subplots(len(layout), 1, figsize=(11, 4.5 * len(layout)), dpi=110, squeeze=False)
  colors = plt.get_cmap("tab10")
  partial = False
  for ax, (title, members) in zip(axes[:, 0], layout, strict=True):
    for i, index in enumerate(members):
      group = drawn[index]
      partial |= _draw_group(ax, group, metric, _label(group["name"], title), colors(i))
    better = direction(metric)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("training step")
    ax.set_ylabel(metric + (f" ({better} is better)" if better else ""))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
  title = f"{metric}: mean over seeds (line), min to max over seeds (band)"
  if partial:
    title += "\nhollow markers: steps where some seeds have no (finite) value"
  fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, bbox_inches="tight")
  plt.close(fig)
  return True


def _json_safe(obj: Any) -> Any:
  """Strict JSON: non-finite floats as the strings "inf", "-inf", "nan" (missing stays null)."""
  if isinstance(obj, float) and not math.isfinite(obj):
    return str(obj)
  if isinstance(obj, dict):
    return {str(k): _json_safe(v) for k, v in obj.items()}
  if isinstance(obj, list | tuple):
    return [_json_safe(v) for v in obj]
  return obj


def _run_record(run: RunRecord, metrics: list[str]) -> dict[str, Any]:
  return {
    "name": run.name,
    "group": run.group,
    "state": run.state,
    "error": run.error,
    "job_id": run.job_id,
    "wall_s": run.wall_s,
    "final_step": run.final_step,
    "final": {m: run.final.get(m) for m in metrics},
  }


def collect(sweep_workdir: str) -> dict[str, Any]:
  """Writes ``results.json``, ``results.md`` and ``curves/<metric>.png`` into ``sweep_workdir``
  from its runs' files; returns what results.json holds."""
  names, sweep = run_list(sweep_workdir)
  runs = [read_run(sweep_workdir, name, group, sweep) for name, group in names]
  metrics = list(dict.fromkeys(m for r in runs for v in r.evaluations.values() for m in v))
  by_group: dict[str, list[RunRecord]] = {}
  for run in runs:
    by_group.setdefault(run.group, []).append(run)
  groups = [summarize_group(g, members, metrics) for g, members in by_group.items()]
  lines = protocol_lines(metrics, runs)
  states: dict[str, int] = {}
  for run in runs:
    states[run.state] = states.get(run.state, 0) + 1
  result = {
    "sweep_workdir": os.path.abspath(sweep_workdir),
    "sweep": sweep.get("sweep") or sweep.get("sweep_file"),
    "collected_at": datetime.datetime.now().isoformat(timespec="seconds"),
    "std": "sample standard deviation over the finished seeds (ddof=1); null with one seed",
    "counts": {"runs": len(runs), "states": states},
    "metrics": {m: {"direction": direction(m), "protocol": lines[m]} for m in metrics},
    "groups": groups,
    "runs": [_run_record(r, metrics) for r in runs],
    "figures": {},
  }
  for metric in table_metrics(metrics):
    relative = os.path.join(CURVES_DIR, _figure_name(metric))
    if plot_curve(metric, groups, os.path.join(sweep_workdir, relative)):
      result["figures"][metric] = relative
  text = markdown(result)
  result = _json_safe(result)
  loop.write_json(os.path.join(sweep_workdir, RESULTS_JSON), result)
  md_path = os.path.join(sweep_workdir, RESULTS_MD)
  with open(md_path + ".tmp", "w") as f:
    f.write(text)
  os.replace(md_path + ".tmp", md_path)
  return result
