"""The run report: one HTML page of what a workdir holds, viewable without TensorBoard.

:func:`write_report` reads the files a training run writes (``metrics.jsonl``, ``eval/``,
``samples/``, ``checkpoints_best/best.json``, ``config.json``, ``run_info.json``,
``launches.jsonl``) and writes ``WORKDIR/report/``: ``report.html`` and the pictures it shows
(curves of every training scalar, grouped into losses, D's outputs, gradient norms, throughput and
the rest; every evaluation metric with the best checkpoint marked; the sample grids as a strip and
an animated GIF). Every reference is relative, so the folder can be copied anywhere. The report
reads files only: it imports neither jax nor the systems, and works for every task.
"""

from __future__ import annotations

import dataclasses
import glob
import html
import json
import math
import os
import re
import shlex
import shutil
import time
from typing import Any

import numpy as np
from absl import logging
from PIL import Image

from ganjax import workdir as workdir_lib
from ganjax.errors import MissingPathError

REPORT_DIR = "report"
REPORT_FILE = "report.html"
# Written by ganjax.checkpoint (BEST_DIRECTORY); named here so the report does not import jax.
BEST_FILE = os.path.join("checkpoints_best", "best.json")

# Sections of the training scalars: (title, panels), a panel (title, regular expression of the
# scalar's last name component, after any "level_0/" prefix). A scalar goes to the first panel
# that matches; the others get a panel each under "Other scalars".
TRAINING_SECTIONS = (
  ("Losses", (("losses", r".*loss.*"),)),
  (
    "Discriminator outputs",
    (("D(x), D(G(z))", r"d_(real|fake)"), ("logits", r"d_(real|fake)_logit")),
  ),
  ("Gradient norms", (("gradient norms", r".*grad_norm"),)),
  ("Throughput", (("steps/s", r"steps_per_sec"), ("images/s", r"images_per_sec"))),
)
OTHER_SECTION = "Other scalars"
# Sample grids in the strip, and frames of the GIF, at most.
STRIP_LENGTH = 6
GIF_FRAMES = 40
# Widths in pixels of the pictures copied into the report (larger ones are scaled down).
STRIP_WIDTH = 320
GIF_WIDTH = 480
PANEL_COLUMNS = 3
_SAMPLE_NAME = re.compile(r"(?P<kind>.*?)step_(?P<step>\d+)\.png")


@dataclasses.dataclass
class RunRecords:
  """What a workdir's files say, read once.

  ``training``: the records of ``metrics.jsonl`` with ``steps_per_sec`` (the loop's logs), sorted
  by step. ``evaluations``: ``{step: {metric: value}}`` from the other records and ``eval/``.
  ``best``: ``{metric, value, step}`` of the best checkpoint, or None.
  """

  workdir: str
  config: dict[str, Any]
  run_info: dict[str, Any]
  launches: list[dict[str, Any]]
  training: list[dict[str, Any]]
  evaluations: dict[int, dict[str, float]]
  best: dict[str, Any] | None


def write_report(workdir: str) -> str:
  """Writes ``WORKDIR/report/report.html`` with its pictures and returns the page's path.

  The folder is built beside the old one and replaces it when complete, so a failure while
  drawing leaves the previous report whole.

  Raises:
    MissingPathError: ``workdir`` holds no ``config.json`` (no run was started there).
  """
  records = read_records(workdir)
  final = os.path.join(workdir, REPORT_DIR)
  partial = f"{final}.partial-{os.getpid()}"
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  try:
    page = _page(records, partial)
    with open(os.path.join(partial, REPORT_FILE), "w") as f:
      f.write(page)
    shutil.rmtree(final, ignore_errors=True)
    os.rename(partial, final)
  finally:
    shutil.rmtree(partial, ignore_errors=True)
  path = os.path.join(final, REPORT_FILE)
  logging.info("Wrote the run report %s.", path)
  return path


def read_records(workdir: str) -> RunRecords:
  """The records of the run in ``workdir`` (missing optional files read as empty)."""
  config_path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  if not os.path.exists(config_path):
    raise MissingPathError(
      f"{config_path} not found: {workdir!r} is not the workdir of a training run, so there is "
      "nothing to report."
    )
  training = [
    record
    for record in _read_jsonl(os.path.join(workdir, workdir_lib.METRICS_FILE))
    if isinstance(record.get("step"), int) and "steps_per_sec" in record
  ]
  evaluations, _ = workdir_lib.read_evaluations(workdir)
  return RunRecords(
    workdir=workdir,
    config=_read_json(config_path) or {},
    run_info=_read_json(os.path.join(workdir, workdir_lib.RUN_INFO_FILE)) or {},
    launches=workdir_lib.read_launches(workdir),
    training=sorted(training, key=lambda r: r["step"]),
    evaluations={step: values for step, values in sorted(evaluations.items()) if values},
    best=_best(workdir),
  )


def _best(workdir: str) -> dict[str, Any] | None:
  """``{metric, value, step}`` of the best checkpoint (``checkpoints_best/best.json``), or None."""
  best = _read_json(os.path.join(workdir, BEST_FILE))
  types = {"metric": str, "value": int | float, "step": int}
  if isinstance(best, dict) and all(isinstance(best.get(k), t) for k, t in types.items()):
    return best
  return None


def _read_json(path: str) -> Any:
  """The JSON content of ``path``; None when it is missing or unreadable (logged)."""
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    logging.warning("Report: skipping the unreadable %s (%s).", path, e)
    return None


def _read_jsonl(path: str) -> list[dict[str, Any]]:
  """The objects of a JSON-lines file (a line cut short by a kill is skipped)."""
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if isinstance(record, dict):
        records.append(record)
  return records


def training_panels(names: list[str]) -> dict[str, dict[str, list[str]]]:
  """``{section: {panel title: scalar names}}`` of :data:`TRAINING_SECTIONS`, in their order;
  scalars no panel takes get a panel each under :data:`OTHER_SECTION`."""
  sections: dict[str, dict[str, list[str]]] = {}
  for name in names:
    prefix, _, leaf = name.rpartition("/")
    placed = next(
      (
        (section, panel)
        for section, panels in TRAINING_SECTIONS
        for panel, pattern in panels
        if re.fullmatch(pattern, leaf)
      ),
      (OTHER_SECTION, leaf),
    )
    section, panel = placed
    title = f"{prefix}: {panel}" if prefix else panel
    sections.setdefault(section, {}).setdefault(title, []).append(name)
  order = [title for title, _ in TRAINING_SECTIONS] + [OTHER_SECTION]
  return {section: sections[section] for section in order if section in sections}


def _series(records: list[tuple[int, dict[str, float]]], name: str):
  """``(steps, values)`` of the records that hold ``name``."""
  points = [(step, values[name]) for step, values in records if name in values]
  return [p[0] for p in points], [p[1] for p in points]


def _phase_starts(training: list[dict[str, Any]]) -> list[tuple[int, str]]:
  """``(first logged step, phase)`` of every phase after the first (e.g. SRGAN's)."""
  return [
    (record["step"], str(record.get("phase")))
    for before, record in zip(training, training[1:], strict=False)
    if record.get("phase") != before.get("phase")
  ]


def _plot_panels(path: str, panels: list[dict[str, Any]], records, marks) -> None:
  """One PNG of small plots: each panel ``{"title", "names"}`` draws its scalars over steps;
  ``marks``: ``(step, label, style)`` vertical lines on every panel (phases, the best step)."""
  from matplotlib.figure import Figure  # Figure alone: no pyplot state, Agg for the PNG.

  columns = min(PANEL_COLUMNS, len(panels))
  rows = math.ceil(len(panels) / columns)
  fig = Figure(figsize=(3.6 * columns, 2.6 * rows), dpi=100, layout="constrained")
  axes = fig.subplots(rows, columns, squeeze=False).ravel()
  for i, (ax, panel) in enumerate(zip(axes, panels, strict=False)):
    for name in panel["names"]:
      steps, values = _series(records, name)
      marker = "o" if len(steps) <= 30 else None
      (line,) = ax.plot(steps, values, marker=marker, markersize=3, linewidth=1.2, label=name)
      _, spread = _series(records, f"{name}_std")
      if len(spread) == len(values):
        low, high = np.subtract(values, spread), np.add(values, spread)
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    if panel.get("best") is not None:
      ax.plot(*panel["best"], marker="*", markersize=12, color="crimson", linestyle="none")
    for step, label, style in marks:
      ax.axvline(step, label=label, linewidth=1, **style)
    ax.set_title(panel["title"], fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if len(panel["names"]) > 1 or (marks and i == 0):  # The marks' legend once.
      ax.legend(fontsize=7)
  for ax in axes[len(panels) :]:
    ax.set_visible(False)
  fig.savefig(path)


def _training_figures(records: RunRecords, folder: str) -> list[tuple[str, str]]:
  """``(section, PNG name)`` of the training curves; empty with fewer than two logged steps."""
  if len(records.training) < 2:
    return []
  points = [(r["step"], workdir_lib.record_numbers(r)) for r in records.training]
  names = list(dict.fromkeys(name for _, values in points for name in values))
  marks = [
    (step, f"phase {phase}", {"color": "gray", "linestyle": ":"})
    for step, phase in _phase_starts(records.training)
  ]
  figures = []
  for section, panels in training_panels(names).items():
    name = "train_" + re.sub(r"\W+", "_", section.lower()).strip("_") + ".png"
    spec = [{"title": title, "names": members} for title, members in panels.items()]
    _plot_panels(os.path.join(folder, name), spec, points, marks)
    figures.append((section, name))
  return figures


def _evaluation_figure(records: RunRecords, folder: str) -> str | None:
  """The PNG of every evaluation metric (one panel each, ``*_std`` as a band around its metric)
  with the best checkpoint's step marked; None with fewer than two evaluations."""
  if len(records.evaluations) < 2:
    return None
  points = list(records.evaluations.items())
  names = list(dict.fromkeys(n for _, values in points for n in values))
  names = [n for n in names if not (n.endswith("_std") and n[: -len("_std")] in names)]
  best, marks, star = records.best, [], None
  if best:
    marks.append((best["step"], f"best checkpoint (step {best['step']})", {"color": "crimson"}))
    star = (best["step"], best["value"])
  panels = [
    {"title": name, "names": [name], "best": star if best and name == best["metric"] else None}
    for name in names
  ]
  _plot_panels(os.path.join(folder, "eval_metrics.png"), panels, points, marks)
  return "eval_metrics.png"


# ------------------------------------------------------------------------------------------------
# Sample grids.


def sample_grids(workdir: str) -> dict[str, list[tuple[int, str]]]:
  """``{kind: [(step, path)]}`` of ``WORKDIR/samples/KINDstep_NNNNNN.png`` (kind ``""`` for the
  samples, e.g. ``"reconstruction_"`` for a VAE's reconstructions), sorted by step."""
  grids: dict[str, list[tuple[int, str]]] = {}
  for path in glob.glob(os.path.join(workdir, "samples", "*.png")):
    match = _SAMPLE_NAME.fullmatch(os.path.basename(path))
    if match:
      grids.setdefault(match["kind"], []).append((int(match["step"]), path))
  return {kind: sorted(grids[kind]) for kind in sorted(grids)}


def _scaled(path: str, width: int) -> Image.Image:
  """The RGB picture of ``path``, scaled down to ``width`` pixels when wider."""
  with Image.open(path) as image:
    image = image.convert("RGB")
  if image.width > width:
    height = max(1, round(image.height * width / image.width))
    image = image.resize((width, height), Image.Resampling.LANCZOS)
  return image


def _spread(items: list, count: int) -> list:
  """At most ``count`` of ``items``, evenly spaced, the first and the last included."""
  if len(items) <= count:
    return list(items)
  indices = sorted(set(np.linspace(0, len(items) - 1, count).round().astype(int).tolist()))
  return [items[i] for i in indices]


def _sample_pictures(grids: list[tuple[int, str]], kind: str, folder: str) -> dict[str, Any]:
  """Writes a strip of grids (``[(step, name)]``) and, for two grids or more, a GIF of them."""
  strip = []
  for step, path in _spread(grids, STRIP_LENGTH):
    name = f"{kind}step_{step:06d}.png"
    _scaled(path, STRIP_WIDTH).save(os.path.join(folder, name))
    strip.append((step, name))
  gif = None
  if len(grids) > 1:
    frames = [_scaled(path, GIF_WIDTH) for _, path in _spread(grids, GIF_FRAMES)]
    size = frames[-1].size
    frames = [f if f.size == size else f.resize(size, Image.Resampling.LANCZOS) for f in frames]
    gif = f"{kind}training.gif"
    durations = [500] * (len(frames) - 1) + [2000]  # Milliseconds; the last grid stays longer.
    frames[0].save(
      os.path.join(folder, gif), save_all=True, append_images=frames[1:], duration=durations, loop=0
    )
  return {"strip": strip, "gif": gif}


# ------------------------------------------------------------------------------------------------
# The page.

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.5em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
td, th { border: 1px solid #ddd; padding: .2em .5em; text-align: left; vertical-align: top; }
tr.best td { background: #fde8e8; font-weight: bold; }
table.values td { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #666; font-style: italic; }
.row { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-end; }
figure { margin: 0; } figcaption { font-size: .8em; color: #555; text-align: center; }
img { max-width: 100%; image-rendering: pixelated; }
img.plot { image-rendering: auto; }
code, pre { font-size: .85em; } pre { background: #f6f6f6; padding: .6em; overflow-x: auto; }
"""


def _e(value: Any) -> str:
  return html.escape(str(value))


def _number(value: float) -> str:
  return f"{value:.5g}" if math.isfinite(value) else str(value)


def _table(rows: list[list[str]], header=None, row_classes=None, css: str = "") -> str:
  """An HTML table of already escaped cells; ``row_classes[i]``: the class of row ``i``."""
  head = "<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>" if header else ""
  body = []
  for i, row in enumerate(rows):
    row_css = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
    body.append(f"<tr{row_css}>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
  table_css = f' class="{css}"' if css else ""
  return f"<table{table_css}>{head}{''.join(body)}</table>"


def _img(name: str, alt: str, css: str = "") -> str:
  attribute = f' class="{css}"' if css else ""
  return f'<img src="{_e(name)}" alt="{_e(alt)}"{attribute}>'


def _figure(content: str, caption: str) -> str:
  return f"<figure>{content}<figcaption>{_e(caption)}</figcaption></figure>"


def _row(items) -> str:
  """Items side by side, wrapping."""
  return f'<div class="row">{"".join(items)}</div>'


def _flatten(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
  """``[(dotted key, leaf)]`` of nested dicts; lists are leaves."""
  if isinstance(tree, dict) and tree:
    return [item for k, v in tree.items() for item in _flatten(v, f"{prefix}{k}.")]
  return [(prefix.rstrip("."), tree)]


def _value_text(value: Any) -> str:
  return value if isinstance(value, str) else json.dumps(value, default=str)


def _key_values(tree: dict[str, Any]) -> str:
  return _table([[_e(k), f"<code>{_e(_value_text(v))}</code>"] for k, v in _flatten(tree)])


def _summary(records: RunRecords) -> str:
  config, info = records.config, records.run_info
  last = records.training[-1]["step"] if records.training else None
  best = records.best
  rows = [
    ("workdir", os.path.abspath(records.workdir)),
    ("task", config.get("task", "gan")),
    ("model", (config.get("model") or {}).get("name", "—")),
    ("data", (info.get("data") or {}).get("name") or (config.get("data") or {}).get("name")),
    ("steps", f"{last if last is not None else 'none logged'} of {config.get('num_train_steps')}"),
    (
      "best checkpoint",
      f"step {best['step']}: {best['metric']} = {_number(best['value'])}"
      if best
      else "none kept (config.eval_best_metric is not set, or no evaluation ran)",
    ),
    ("git revision", info.get("git_revision") or "—"),
    ("report written", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
  ]
  return _table([[_e(k), _e(v)] for k, v in rows])


def _training_html(records: RunRecords, folder: str) -> str:
  figures = _training_figures(records, folder)
  if figures:
    return _row(
      _figure(_img(name, f"{title} over steps", "plot"), title) for title, name in figures
    )
  if not records.training:
    return '<p class="note">No training step was logged (metrics.jsonl is empty or missing).</p>'
  record = records.training[0]
  values = [[_e(k), _number(v)] for k, v in workdir_lib.record_numbers(record).items()]
  return (
    f'<p class="note">Only one logged step (step {record["step"]}): no curves to draw. '
    "Its values:</p>" + _table(values)
  )


def _evaluation_html(records: RunRecords, folder: str) -> str:
  if not records.evaluations:
    return '<p class="note">No evaluation was recorded (metrics.jsonl and eval/ hold none).</p>'
  best = records.best
  parts = []
  if best:
    parts.append(
      f"<p>Best checkpoint (<code>checkpoints_best/</code>, <code>--step=best</code>): "
      f"<b>step {_e(best['step'])}</b>, {_e(best['metric'])} = {_e(_number(best['value']))}.</p>"
    )
  else:
    parts.append('<p class="note">No best checkpoint was kept (config.eval_best_metric).</p>')
  figure = _evaluation_figure(records, folder)
  if figure:
    parts.append(_img(figure, "evaluation metrics over steps", "plot"))
  else:
    parts.append('<p class="note">Only one evaluation: no curves to draw.</p>')
  names = list(dict.fromkeys(n for values in records.evaluations.values() for n in values))
  rows = [
    [str(step), *(_number(values[n]) if n in values else "" for n in names)]
    for step, values in records.evaluations.items()
  ]
  best_step = best.get("step") if best else None
  classes = ["best" if step == best_step else "" for step in records.evaluations]
  parts.append(_table(rows, ["step", *map(_e, names)], classes, css="values"))
  return "".join(parts)


def _samples_html(records: RunRecords, folder: str) -> str:
  grids = sample_grids(records.workdir)
  real = os.path.join(records.workdir, "samples", "real.png")
  if not grids and not os.path.exists(real):
    return '<p class="note">No sample grids were written (samples/ is empty or missing).</p>'
  parts = []
  for kind, found in grids.items():
    title = (kind.rstrip("_").replace("_", " ") or "sample") + " grids"
    pictures = _sample_pictures(found, kind, folder)
    parts.append(f"<h3>{_e(title.capitalize())} ({len(found)} written)</h3>")
    figures = [
      _figure(_img(name, f"{title}, step {step}"), f"step {step}")
      for step, name in pictures["strip"]
    ]
    if pictures["gif"]:
      caption = f"animated: {len(_spread(found, GIF_FRAMES))} grids over training"
      figures.insert(0, _figure(_img(pictures["gif"], f"{title} over training"), caption))
    parts.append(_row(figures))
  if os.path.exists(real):
    _scaled(real, STRIP_WIDTH).save(os.path.join(folder, "real.png"))
    parts.append(f"<h3>Real data</h3>{_img('real.png', 'real training data')}")
  return "".join(parts)


def _launches_html(launches: list[dict[str, Any]]) -> str:
  if not launches:
    return '<p class="note">No launches.jsonl.</p>'
  rows = []
  for launch in launches:
    command = launch.get("command") or []
    changes = launch.get("config_changes") or []
    rows.append(
      [
        _e(launch.get("launch")),
        _e(launch.get("time", "—")),
        _e(launch.get("host", "—")),
        f"<code>{_e(shlex.join(map(str, command)) if command else '—')}</code>",
        _e(launch.get("resumed_from_step", "—")),
        _e(launch.get("git_revision") or "—"),
        _e(", ".join(str(c.get("field")) for c in changes if isinstance(c, dict)) or "—"),
      ]
    )
  header = ["launch", "time", "host", "command", "from step", "git revision", "config changes"]
  return _table(rows, header)


def _page(records: RunRecords, folder: str) -> str:
  """The HTML of the report; writes its pictures into ``folder``."""
  name = os.path.basename(os.path.abspath(records.workdir))
  sections = [
    ("Summary", _summary(records)),
    ("Training", _training_html(records, folder)),
    ("Evaluation", _evaluation_html(records, folder)),
    ("Samples over training", _samples_html(records, folder)),
    ("Config (config.json)", _key_values(records.config)),
    (
      "Provenance (run_info.json, launches.jsonl)",
      (
        _key_values(records.run_info)
        if records.run_info
        else '<p class="note">No run_info.json.</p>'
      )
      + "<h3>Launches</h3>"
      + _launches_html(records.launches),
    ),
  ]
  body = "".join(f"<h2>{_e(title)}</h2>{content}" for title, content in sections)
  return (
    '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
    f"<title>ganjax run report: {_e(name)}</title><style>{_STYLE}</style></head>"
    f"<body><h1>ganjax run report: {_e(name)}</h1>{body}</body></html>\n"
  )
