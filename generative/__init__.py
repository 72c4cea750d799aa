"""Generative inpainting samplers: draw completions of partially observed images.

The AIPO / AIPO-R sampler of Harvey, Naderiparizi & Wood ("Image Completion via Inference in Deep
Generative Models", 2021): a VD-VAE-style hierarchical VAE (:mod:`generative.vdvae`) with a partial encoder
(:mod:`generative.aipo`), trained by :mod:`generative.training`, evaluated by :mod:`generative.evaluation`;
samplers are built by name with :func:`generative.registry.build_sampler`. Imports only boed.runtime,
boed.protocols and datasets.
"""
