"""Diffusion inpainting samplers: a mask-conditioned DDPM sampled by DDIM (``diffusion``) and RePaint
on an unconditional DDPM (``repaint``).

A denoising diffusion model (Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", 2020)
learns to undo T small Gaussian noising steps by predicting the noise ε in
x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε. Sampling walks from pure noise back to an image.

Modules, one idea each:

* :mod:`.schedule` — ᾱ (linear or Nichol & Dhariwal's cosine schedule), the DDIM step (Song et al.,
  "Denoising Diffusion Implicit Models", 2021, Eq. 12), RePaint's resampling schedule.
* :mod:`.unet` — the ε-prediction UNet (time embedding, residual blocks, attention at low resolution).
* :mod:`.model` — config presets (``tiny``, ``cpu``, ``paper``) and the ε loss.
* :mod:`.sampling` — the two inpainting loops over any ε-predictor.
* :mod:`.family` — the :class:`~generative.family.SamplerFamily` (``FAMILY``) and sampler adapters.

Both samplers need no guidance: the conditional network sees cat([x_t, x⊙m, m]); RePaint (Lugmayr
et al., "RePaint: Inpainting using Denoising Diffusion Probabilistic Models", 2022) replaces the
known pixels by the noised observation at every step and resamples.
"""
