"""sagan_jax: Self-Attention GAN (Zhang et al. 2019) in JAX/Flax."""

__version__ = "0.1.0"
