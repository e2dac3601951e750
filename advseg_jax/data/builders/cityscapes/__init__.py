"""TFDS builder package `cityscapes`."""

from advseg_jax.data.builders.cityscapes.cityscapes_dataset_builder import Builder

__all__ = ["Builder"]
