"""advseg-jax: adversarial semantic segmentation (AdvSemiSeg, AdaptSegNet, Luc et al.) in JAX."""

__version__ = "0.1.0"
