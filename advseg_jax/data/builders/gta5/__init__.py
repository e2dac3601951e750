"""TFDS builder package `gta5`."""

from advseg_jax.data.builders.gta5.gta5_dataset_builder import Builder

__all__ = ["Builder"]
