"""Sampler evaluation: every sampler on the same held-out images and masks (``boed evaluate-samplers``).

A sampler serves BOED through the posterior its completions stand for: Eq. 17 of Harvey,
Naderiparizi & Wood (2021) averages the classifier over the completions, so a sampler is good
for BOED when (1) its completions are realistic where the classifier looks (FID / KID in the
classifier's own feature space), (2) they spread like the true posterior (diversity, the
inception-score analogue, and the calibration rank histogram: the truth should look like one
more draw), (3) the classifier's mean over them matches its prediction on the observation (the
sampler–classifier gap), and, in the end, (4) the scans it leads to classify better (a real
simulation per sampler, paired against random and against AIPO).

* :mod:`boed.evaluation.metrics` — the pure metric functions (known-answer tests in
  tests/evaluation);
* :mod:`boed.evaluation.engine` — chunks, per-(sampler, chunk) cache, merge, cost;
* :mod:`boed.evaluation.summary` — per-setting and headline tables;
* :mod:`boed.evaluation.usefulness` — the BOED simulation per sampler and its paired tables;
* :mod:`boed.evaluation.report` — Markdown / CSV tables, figures, the offline HTML page.

boed/ never imports generative/ or classifiers/: the CLI (``cli/evaluate.py``) builds the
samplers and the classifier and hands in the fidelity functions (:class:`engine.Scorers`).
"""
