"""TFDS builder package `synthia`."""

from advseg_jax.data.builders.synthia.synthia_dataset_builder import Builder

__all__ = ["Builder"]
