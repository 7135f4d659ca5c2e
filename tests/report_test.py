"""The run report (ganjax.report, --mode=report): every part of the page, the pictures it
references, runs with little in them, the end of training, and the page in a headless browser."""

import html
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
from absl import logging as absl_logging
from conftest import REPO_ROOT, load_config
from PIL import Image

from ganjax import api, errors, report

# Names Debian, Ubuntu and Google give the browser's binary.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")

TRAINING_SCALARS = ("d_loss", "g_loss", "d_real", "d_fake", "d_grad_norm", "weight_norm")


def _write_jsonl(path, records, tail=""):
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
    f.write(tail)


def _write_json(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f)


def _picture(path, seed):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (40, 60, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path)


def _workdir(tmp_path, steps=(2, 4, 6, 8), evaluations=True, samples=True):
  """A workdir as a GAN run writes it: the records of ``steps``, evaluations at 4 and 8 (FID in
  metrics.jsonl, precision in eval/), the best checkpoint at 4, sample grids at 4 and 8."""
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  _write_json(
    os.path.join(workdir, "config.json"),
    {"task": "gan", "seed": 0, "num_train_steps": 8, "model": {"name": "dcgan", "latent_dim": 4}},
  )
  _write_json(
    os.path.join(workdir, "run_info.json"),
    {"git_revision": "0123abc", "versions": {"jax": "0.10.0"}, "data": {"name": "toy"}},
  )
  launch = {"launch": 1, "time": "t", "host": "h", "command": ["run", "<script>alert(1)</script>"]}
  _write_jsonl(os.path.join(workdir, "launches.jsonl"), [launch])
  records = [
    {
      "step": step,
      "wall_time": float(step),
      **{name: 1.0 / (step + i) for i, name in enumerate(TRAINING_SCALARS)},
      "steps_per_sec": 10.0,
      "images_per_sec": 640.0,
    }
    for step in steps
  ]
  if evaluations:
    records += [
      {"step": 4, "wall_time": 4.5, "fid": 9.0, "kid": 0.1, "kid_std": 0.01},
      {"step": 8, "wall_time": 8.5, "fid": 12.0, "kid": 0.2, "kid_std": 0.02},
    ]
    for step, precision in ((4, 0.5), (8, 0.6)):
      _write_json(
        os.path.join(workdir, "eval", f"step_{step:06d}.json"),
        {"values": {"precision": precision}, "protocol": {"step": step}},
      )
    _write_json(
      os.path.join(workdir, "checkpoints_best", "best.json"),
      {"metric": "fid", "value": 9.0, "step": 4},
    )
  # A line cut short by a kill is skipped.
  _write_jsonl(os.path.join(workdir, "metrics.jsonl"), records, tail='{"step": 9, "d_lo')
  if samples:
    for step in (4, 8):
      _picture(os.path.join(workdir, "samples", f"step_{step:06d}.png"), step)
    _picture(os.path.join(workdir, "samples", "real.png"), 0)
  return workdir


class _Page(HTMLParser):
  """The ``src`` of every ``<img>`` and the page's visible text, cells and blocks apart."""

  def __init__(self, path):
    super().__init__()
    self.images, self.text, self._hidden = [], [], False
    with open(path) as f:
      self.feed(f.read())
    self.text = " ".join("".join(self.text).split())

  def handle_starttag(self, tag, attrs):
    if tag == "img":
      self.images.append(dict(attrs)["src"])
    self._hidden = tag in ("style", "title")
    if tag in ("td", "th", "tr", "p", "h1", "h2", "h3", "figcaption"):
      self.text.append(" ")

  def handle_endtag(self, tag):
    self._hidden = False

  def handle_data(self, data):
    if not self._hidden:
      self.text.append(data)


def test_report_shows_curves_evaluations_samples_config_and_provenance(tmp_path):
  workdir = _workdir(tmp_path)
  path = report.write_report(workdir)
  folder = os.path.join(workdir, "report")
  assert path == os.path.join(folder, "report.html")
  page = _Page(path)
  assert set(page.images) == {
    "train_losses.png",
    "train_discriminator_outputs.png",
    "train_gradient_norms.png",
    "train_throughput.png",
    "train_other_scalars.png",
    "eval_metrics.png",
    "training.gif",
    "step_000004.png",
    "step_000008.png",
    "real.png",
  }
  for name in page.images:  # Relative, inside the folder, and there.
    assert os.path.isfile(os.path.join(folder, name)) and "/" not in name
  with Image.open(os.path.join(folder, "training.gif")) as gif:
    assert gif.n_frames == 2
  assert "best checkpoint step 4: fid = 9" in page.text
  assert "Best checkpoint (checkpoints_best/, --step=best): step 4, fid = 9." in page.text
  # Evaluations of metrics.jsonl and eval/ in one table; kid_std as a column.
  assert "step fid kid kid_std precision 4 9 0.1 0.01 0.5 8 12 0.2 0.02 0.6" in page.text
  assert "model.latent_dim 4" in page.text and "0123abc" in page.text
  with open(path) as f:
    source = f.read()
  assert "<script>" not in source and "&lt;script&gt;alert(1)&lt;/script&gt;" in source


def test_report_of_a_run_with_one_step_no_evaluation_and_no_samples(tmp_path):
  workdir = _workdir(tmp_path, steps=(1,), evaluations=False, samples=False)
  page = _Page(report.write_report(workdir))
  assert page.images == []
  assert "Only one logged step (step 1): no curves to draw." in page.text
  assert "No evaluation was recorded" in page.text
  assert "No sample grids were written" in page.text
  assert "best checkpoint none kept" in page.text


def test_report_of_a_run_that_logged_nothing(tmp_path):
  workdir = _workdir(tmp_path, steps=(), evaluations=False, samples=False)
  os.remove(os.path.join(workdir, "metrics.jsonl"))
  os.remove(os.path.join(workdir, "run_info.json"))
  page = _Page(report.write_report(workdir))
  assert "No training step was logged" in page.text and "No run_info.json." in page.text


def test_rewriting_replaces_the_old_report(tmp_path):
  workdir = _workdir(tmp_path)
  stale = os.path.join(workdir, "report", "stale.png")
  report.write_report(workdir)
  open(stale, "w").close()
  report.write_report(workdir)
  assert not os.path.exists(stale)
  assert sorted(os.listdir(workdir)).count("report") == 1
  assert not [name for name in os.listdir(workdir) if name.startswith("report.partial")]


def test_report_of_a_run_with_phases_and_its_own_scalars(tmp_path):
  """SRGAN-like records: phases, scalars no section names, a boolean and a NaN."""
  workdir = str(tmp_path)
  _write_json(os.path.join(workdir, "config.json"), {"task": "srgan"})
  records = [
    {
      "step": step,
      "phase": "pretrain" if step < 3 else "adversarial",
      "content_loss": 1.0 / step,
      "train_psnr": float(step),
      "finite": True,
      "steps_per_sec": 1.0 if step > 1 else float("nan"),
    }
    for step in range(1, 5)
  ]
  _write_jsonl(os.path.join(workdir, "metrics.jsonl"), records)
  page = _Page(report.write_report(workdir))
  assert page.images == ["train_losses.png", "train_throughput.png", "train_other_scalars.png"]
  assert report.training_panels(["train_psnr"]) == {"Other scalars": {"train_psnr": ["train_psnr"]}}


def test_a_folder_without_config_is_a_clear_error(tmp_path):
  with pytest.raises(errors.MissingPathError, match=r"config\.json not found.*not the workdir"):
    report.write_report(str(tmp_path))


def test_training_panels_group_scalars_by_their_last_name():
  names = ["d_loss", "g_loss", "d_real", "d_fake_logit", "level_1/d_loss", "steps_per_sec", "kl"]
  assert report.training_panels(names) == {
    "Losses": {"losses": ["d_loss", "g_loss"], "level_1: losses": ["level_1/d_loss"]},
    "Discriminator outputs": {"D(x), D(G(z))": ["d_real"], "logits": ["d_fake_logit"]},
    "Throughput": {"steps/s": ["steps_per_sec"]},
    "Other scalars": {"kl": ["kl"]},
  }


def test_sample_grids_by_kind(tmp_path):
  workdir = str(tmp_path)
  for name in ("step_000010.png", "step_000002.png", "reconstruction_step_000002.png", "real.png"):
    _picture(os.path.join(workdir, "samples", name), 0)
  grids = report.sample_grids(workdir)
  assert {kind: [step for step, _ in found] for kind, found in grids.items()} == {
    "": [2, 10],
    "reconstruction_": [2],
  }


def _cli(*args):
  """``python -m ganjax.main ARGS``; prints whether jax was imported when it exits."""
  code = (
    "import atexit, runpy, sys; "
    "atexit.register(lambda: print('jax imported:', 'jax' in sys.modules)); "
    f"sys.argv = ['ganjax.main', *{list(args)!r}]; "
    "runpy.run_module('ganjax.main', run_name='__main__')"
  )
  return subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
  )


def test_mode_report_writes_the_page_without_jax(tmp_path):
  workdir = _workdir(tmp_path)
  result = _cli("--mode=report", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr
  assert "jax imported: False" in result.stdout
  assert os.path.exists(os.path.join(workdir, "report", "report.html"))
  missing = _cli("--mode=report", f"--workdir={tmp_path}")
  assert missing.returncode == errors.USER_ERROR_EXIT_CODE
  assert "config.json not found" in missing.stderr


def test_training_ends_with_the_report(tmp_path):
  config = load_config("gaussian_mixture", "dataset=ring,runlocal")
  config.parallel.num_devices = 1
  config.num_train_steps = 4
  workdir = str(tmp_path / "run")
  api.train(config, workdir)
  page = _Page(os.path.join(workdir, "report", "report.html"))
  assert {"train_losses.png", "training.gif", "real.png"} <= set(page.images)
  assert "steps 4 of 4" in page.text


def test_a_failing_report_only_warns(tmp_path, monkeypatch):
  def fail(workdir):
    raise OSError(28, "No space left on device")

  warnings = []
  monkeypatch.setattr(report, "write_report", fail)
  monkeypatch.setattr(absl_logging, "warning", lambda *args: warnings.append(args[0] % args[1:]))
  api._write_report(str(tmp_path))  # Does not raise.
  assert warnings == [
    f"Could not write the run report of {tmp_path}: OSError: [Errno 28] No space left on device"
  ]


# ------------------------------------------------------------------------------------------------
# The page in a browser.

# Added to a copy of the page: once everything has loaded, the sources of the images that did not.
_IMAGE_CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter((i) => !(i.complete && i.naturalWidth > 0));
  const out = document.createElement("pre");
  out.id = "image-check";
  out.textContent = JSON.stringify({
    total: images.length, broken: broken.map((i) => i.getAttribute("src"))});
  document.body.appendChild(out);
});
</script>"""


def _chromium() -> str | None:
  return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


@pytest.mark.skipif(
  _chromium() is None,
  reason=f"no Chromium ({', '.join(CHROMIUM_NAMES)} not on PATH; Debian: apt-get install chromium)",
)
def test_every_image_loads_in_a_headless_browser(tmp_path):
  folder = os.path.dirname(report.write_report(_workdir(tmp_path)))
  with open(os.path.join(folder, "report.html")) as f:
    page = f.read()
  checked = os.path.join(folder, "checked.html")  # Beside the page: the same relative paths.
  with open(checked, "w") as f:
    f.write(page.replace("</body>", _IMAGE_CHECK + "</body>"))
  command = [
    _chromium(),
    "--headless",
    "--no-sandbox",  # As root (CI); the page is ours.
    "--disable-gpu",
    f"--user-data-dir={tmp_path / 'profile'}",
    "--virtual-time-budget=10000",
    "--dump-dom",
    f"file://{checked}",
  ]
  result = subprocess.run(command, capture_output=True, text=True, timeout=120)
  found = re.search(r'<pre id="image-check">(.*?)</pre>', result.stdout)
  assert found, f"no image check in the page: {result.stderr[-2000:]}"
  check = json.loads(html.unescape(found.group(1)))
  assert check == {"total": 10, "broken": []}
