"""TFDS builder package `stanford_background`."""

from advseg_jax.data.builders.stanford_background.stanford_background_dataset_builder import Builder

__all__ = ["Builder"]
