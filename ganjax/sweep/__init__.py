"""Sweeps: many runs of ganjax from a sweep file, on this machine or on Slurm, and their results.

A sweep file ``experiments/<study>/sweep.py`` defines ``get_sweep()``, which returns the runs as
dicts (``"config"``: a config string; every other key a dotted override, the seed included),
built by hand or with the helpers here (:mod:`ganjax.sweep.spec`)::

    from ganjax.sweep import product, runs, seeds

    def get_sweep():
      return product({"config": "configs/gaussian_mixture.py:dataset=ring"},
                     runs("optim.g.learning_rate", [1e-4, 1e-3]), seeds(5))

``python -m ganjax.sweep --sweep=experiments/X/sweep.py --workdir=runs/X --launcher=local``
trains them (:mod:`ganjax.sweep.__main__`); ``--status`` shows where they stand and ``--collect``
writes the result tables.
"""

from ganjax.sweep.spec import Run, SweepError, load_sweep, product, runs, seeds, zip_runs

__all__ = ["Run", "SweepError", "load_sweep", "product", "runs", "seeds", "zip_runs"]
