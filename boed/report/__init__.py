"""Reports of a simulation run, rebuilt from the store alone.

- :mod:`boed.report.metrics`: accuracy, AUROC and entropy vs number of scans (pure functions).
- :mod:`boed.report.figures`: Fig. 5 (accuracy vs scans) and Fig. 6-style EIG visualisations of
  Harvey, Naderiparizi & Wood, "Image Completion via Inference in Deep Generative Models" (2021)
  (matplotlib, Agg backend, imported inside the functions).
- :func:`build_report`: writes the PNGs and an ``index.html`` that needs no network access.
"""

from boed.report.build import build_report, load_paired, load_summary, load_target_summary, run_target

__all__ = ["build_report", "load_paired", "load_summary", "load_target_summary", "run_target"]
