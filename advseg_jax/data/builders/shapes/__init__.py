"""TFDS builder package `shapes`."""

from advseg_jax.data.builders.shapes.shapes_dataset_builder import Builder

__all__ = ["Builder"]
