"""Amortised BOED (beyond the paper): a network that predicts the whole EIG map in one pass.

The exact controller (``boed.acquisition``) estimates ``EIG(c)`` of Eq. 17 of Harvey,
Naderiparizi & Wood, "Image Completion via Inference in Deep Generative Models" (2021) for every
candidate ``c`` from N completions and K x N classifier calls, about a second per decision on the
cpu preset. Here a small convnet ``f(x * m, m) -> (G, G)`` is trained by regression on the maps
the exact controller computes on training images, and then chooses in one forward pass: a value
network over the candidates, in the spirit of the amortised designs of Foster, Ivanova, Malik &
Rainforth, "Deep Adaptive Design: Amortizing Sequential Bayesian Experimental Design" (ICML 2021)
and of the conditional mutual-information network of DIME (see ``docs/amortized.md``). Unlike
DAD, which trains a design policy end to end on an information bound, the network here imitates
the exact greedy estimator (a supervised surrogate of one step), so it inherits its criterion and
can be checked against it map by map.

Modules: :mod:`~boed.amortized.dataset` (the map dataset: sessions on training images with the
exact controller, resumable chunks), :mod:`~boed.amortized.model` (the network),
:mod:`~boed.amortized.train` (training on the shared runtime), :mod:`~boed.amortized.policy`
(policy ``amortized`` of ``boed simulate``).
"""

DEFAULT_CHECKPOINT = "phantom-cpu"
"""Stem of the shipped checkpoint in ``boed/amortized/weights/`` (the cpu preset)."""
