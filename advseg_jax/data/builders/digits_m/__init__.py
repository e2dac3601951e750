"""TFDS builder package `digits_m`."""

from advseg_jax.data.builders.digits_m.digits_m_dataset_builder import Builder

__all__ = ["Builder"]
