"""TFDS builder package `voc_aug`."""

from advseg_jax.data.builders.voc_aug.voc_aug_dataset_builder import Builder

__all__ = ["Builder"]
