"""Bayesian optimal experimental design (BOED) for small field-of-view x-ray acquisition.

A scan session: after each scan a generative *sampler* imagines N completions of the whole image
from what has been seen; for every candidate scan location c the controller estimates the expected
information gain (Eq. 17 of Harvey, Naderiparizi & Wood, "Image Completion via Inference in Deep
Generative Models", 2021)

    EIG(c) = H[g(v | x*m, m)] - sum_n w_n H[g(v | I_n * m_c, m_c)],   m_c = m + patch(c)

with a classifier g on partial observations, and scans where it is largest (the paper's footnote 6:
the EIG is maximised). This package is the controller, the session store and the runtime helpers;
it imports no sampler or classifier implementation.
"""

__version__ = "0.1.0"
