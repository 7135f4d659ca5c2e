r"""Command line of sweeps: launch, resume, watch and collect the runs of a sweep file.

  python -m ganjax.sweep --sweep=experiments/X/sweep.py --workdir=runs/X --launcher=local --jobs=2
  python -m ganjax.sweep --sweep=experiments/X/sweep.py --workdir=runs/X --launcher=slurm \
      --slurm.partition=gpu --slurm.time=4:00:00 --slurm.gpus_per_task=1 --slurm.cpus_per_task=8
  python -m ganjax.sweep --workdir=runs/X --status       # the table: where each run stands
  python -m ganjax.sweep --workdir=runs/X --collect      # results.json, results.md, curves/

The same launch command resumes a sweep: finished runs are skipped, interrupted ones resume from
their checkpoints, runs whose jobs are pending or running are not submitted again, failed ones are
reported with the tail of their log and rerun with ``--retry_failed``. When no run is left pending
or running, the results are collected (:func:`ganjax.sweep.results.collect`).

Exit status: 0 when every run finished (``--nowait``: when the jobs are submitted), 1 when some
failed or were interrupted, 2 for an error in the command (one line ``ganjax.sweep: error: ...``;
``--traceback`` shows its traceback), 130 after Ctrl-C and 143 after SIGTERM (the local runs stop
with a checkpoint first).
"""

from __future__ import annotations

import os
import sys
import traceback

from absl import app, flags, logging

from ganjax import errors, logs

FLAGS = flags.FLAGS


class FlagError(errors.ConfigError):
  """A flag of the sweep command is missing or invalid."""


def define_flags() -> None:
  """The flags (defined when the command runs, so importing this module defines none)."""
  flags.DEFINE_string("sweep", None, "Sweep file whose get_sweep() lists the runs.")
  flags.DEFINE_string("workdir", None, "Sweep workdir: runs/<run>/, logs/, sweep.json, results.")
  flags.DEFINE_string("launcher", "local", "Where runs train: local, debug (in-process), slurm.")
  flags.DEFINE_integer(
    "jobs", None, "local: runs at a time, each on its own cores (default: one per GPU, else 1)."
  )
  flags.DEFINE_bool("retry_failed", False, "Rerun the failed runs (they are reported otherwise).")
  flags.DEFINE_bool("status", False, "Print the state of each run and exit.")
  flags.DEFINE_bool("collect", False, "Write results.json, results.md and curves/ and exit.")
  flags.DEFINE_bool("wait", True, "slurm: wait for the jobs, then collect (--nowait: submit only).")
  flags.DEFINE_float("poll_s", None, "Seconds between checks of the jobs (local 1, slurm 5).")
  flags.DEFINE_string("slurm.partition", None, "slurm: partition (default: the cluster's).")
  flags.DEFINE_string("slurm.time", "60", "slurm: time limit per job (minutes, or H:MM:SS).")
  flags.DEFINE_integer("slurm.cpus_per_task", None, "slurm: CPU cores per task.")
  flags.DEFINE_integer("slurm.gpus_per_task", None, "slurm: GPUs per task.")
  flags.DEFINE_integer("slurm.nodes", 1, "slurm: nodes per run (multi-host when > 1).")
  flags.DEFINE_integer("slurm.tasks_per_node", 1, "slurm: processes per node (one per host).")
  flags.DEFINE_integer("slurm.array_parallelism", 256, "slurm: array jobs running at once.")
  flags.DEFINE_float("slurm.mem_gb", None, "slurm: memory per node in GB.")
  flags.DEFINE_string("slurm.account", None, "slurm: account to charge.")
  flags.DEFINE_string("slurm.qos", None, "slurm: quality of service.")
  flags.DEFINE_bool("traceback", False, "Print the traceback of a command error too.")


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise FlagError(f"Unexpected arguments: {' '.join(argv[1:])} (flags start with --).")
  logs.quiet_libraries()
  from ganjax.sweep import launchers, spec

  workdir = FLAGS.workdir
  if not workdir:
    raise FlagError("--workdir is required (the sweep's folder, e.g. --workdir=runs/my_study).")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise errors.WorkdirError(f"--workdir={workdir} is a file, not a directory.")
  launchers.check_launcher(FLAGS.launcher)
  if FLAGS.status or FLAGS.collect:
    if FLAGS.status:
      print(status_table(workdir, FLAGS.sweep), flush=True)
    if FLAGS.collect:
      collect(workdir, required=True)
    return 0
  if not FLAGS.sweep:
    raise FlagError("--sweep is required to launch (a sweep file, e.g. experiments/X/sweep.py).")
  slurm = launchers.SlurmOptions(
    partition=FLAGS["slurm.partition"].value,
    time_min=launchers.parse_time(FLAGS["slurm.time"].value),
    cpus_per_task=FLAGS["slurm.cpus_per_task"].value,
    gpus_per_task=FLAGS["slurm.gpus_per_task"].value,
    nodes=FLAGS["slurm.nodes"].value,
    tasks_per_node=FLAGS["slurm.tasks_per_node"].value,
    array_parallelism=FLAGS["slurm.array_parallelism"].value,
    mem_gb=FLAGS["slurm.mem_gb"].value,
    account=FLAGS["slurm.account"].value,
    qos=FLAGS["slurm.qos"].value,
  )
  if FLAGS.poll_s is not None and FLAGS.poll_s <= 0:
    raise FlagError(f"--poll_s must be > 0, got {FLAGS.poll_s}.")
  slurm.check()
  if FLAGS.launcher == "local":
    launchers.make_slots(FLAGS.jobs)  # Checks --jobs against the cores (and GPUs).
  runs = spec.load_sweep(FLAGS.sweep)
  options = launchers.Options(
    launcher=FLAGS.launcher,
    jobs=FLAGS.jobs,
    retry_failed=FLAGS.retry_failed,
    wait=FLAGS.wait,
    poll_s=FLAGS.poll_s,
    slurm=slurm,
  )
  return launchers.launch(workdir, runs, FLAGS.sweep, options, collect=collect)


def status_table(workdir: str, sweep_file: str | None = None) -> str:
  """The ``--status`` table of the runs of ``sweep_file`` (default: those in sweep.json)."""
  from ganjax.sweep import spec, status

  state = status.read_sweep(workdir)
  if sweep_file:
    names = [run.name for run in spec.load_sweep(sweep_file)]
  elif state and state.get("runs"):
    names = [run["name"] for run in state["runs"]]
  else:
    raise errors.MissingPathError(
      f"--workdir={workdir} holds no sweep ({status.SWEEP_FILE} not found); launch one with "
      "--sweep=..., or pass --sweep to see the runs it would start."
    )
  return status.format_table(status.sweep_status(workdir, names, state))


def collect(workdir: str, required: bool = False) -> dict | None:
  """``ganjax.sweep.results.collect(workdir)``; without that module, a warning (or, ``required``,
  an error)."""
  try:
    from ganjax.sweep import results
  except ImportError as e:
    if e.name != "ganjax.sweep.results":
      raise
    if required:
      raise FlagError("--collect: ganjax.sweep.results is not installed.") from None
    logging.warning("Results not collected: ganjax.sweep.results is not installed.")
    return None
  result = results.collect(workdir)
  written = [name for name in ("results.json", "results.md") if os.path.exists(f"{workdir}/{name}")]
  logging.info("Results: %s in %s.", ", ".join(written) or "nothing written", workdir)
  return result


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parse, with its errors as :class:`FlagError` (one line)."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    raise FlagError(str(e)) from e


def wants_traceback(argv: list[str]) -> bool:
  try:
    return bool(FLAGS.traceback) or FLAGS.verbosity >= 1
  except Exception:  # noqa: BLE001 (parsing failed)
    return any(a in ("--traceback", "-traceback", "--traceback=true") for a in argv)


def run(argv: list[str] | None = None) -> None:
  """The command: ``app.run(main)``; a user error ends in one line with exit status 2."""
  argv = list(sys.argv if argv is None else argv)
  define_flags()
  try:
    app.run(main, argv=argv, flags_parser=parse_flags)
  except SystemExit:
    raise
  except errors.UserError as e:
    text = "".join(traceback.format_exception(e)) if wants_traceback(argv) else ""
    sys.stderr.write(f"{text}ganjax.sweep: error: {str(e).strip() or type(e).__name__}\n")
    sys.stderr.flush()
    sys.exit(errors.USER_ERROR_EXIT_CODE)


if __name__ == "__main__":
  run()
