"""GAN latent-space inpainting: Yeh et al. (2017, DCGAN, ``gan-yeh``) and Vitoria et al. (2018,
improved WGAN-GP, ``wgan-vitoria``).

* :mod:`~generative.gan.dcgan`, :mod:`~generative.gan.wgan`: the networks, configs and families
  (``FAMILY`` at the bottom of each, trained by :func:`generative.training.train_generative`);
* :mod:`~generative.gan.latent_search`: importance-weighted context, gradient and prior losses and
  the batched latent search;
* :mod:`~generative.gan.poisson`: Poisson blending (the exact sparse solve);
* :mod:`~generative.gan.family`: the shared family half and the sampler (``GANSampler``).
"""
