"""Step-wise acquisition: the BOED controller for real use and the batched scan environment.

- :class:`Controller` (``controller.py``): ``propose(observed, mask) -> Proposal`` (the next
  location, the EIG map, its Monte Carlo standard error, optionally completions and IG maps) and
  ``observe(location, patch)``; it never holds a hidden image, so an external loop can drive a
  real scanner with it (docs/acquisition.md, examples/acquire_dicom.py).
- :class:`ScanEnv` (``env.py``): B parallel episodes with Gymnasium's vector-env API
  (``reset``, ``step``) plus ``try_action`` and ``decide``; one Controller per episode.
  :func:`run_episodes` is the session loop over them (``boed.session.run_session`` is B = 1).
- :func:`greedy_scans`: k scans per step, each chosen conditionally on the earlier ones.
- :class:`AcquisitionLog` (``log.py``): a real session logged to the store like a simulated one
  (run kind ``acquisition``).

Heavy imports (torch, gymnasium) happen when this package is imported, never by ``import boed``.
"""

from boed.acquisition.controller import (
    Controller,
    Decision,
    Proposal,
    conditional_eig_batch,
    decide_batch,
    greedy_scans,
    predict_batch,
    propose_batch,
)
from boed.acquisition.env import ScanEnv, run_episodes
from boed.acquisition.log import AcquisitionLog

__all__ = [
    "AcquisitionLog",
    "Controller",
    "Decision",
    "Proposal",
    "ScanEnv",
    "conditional_eig_batch",
    "decide_batch",
    "greedy_scans",
    "predict_batch",
    "propose_batch",
    "run_episodes",
]
