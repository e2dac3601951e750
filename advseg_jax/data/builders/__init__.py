"""TFDS builders (array_record) of the datasets used by advseg-jax.

One package per dataset (`voc_aug`, `cityscapes`, `gta5`, `synthia`, `shapes`), each
with a `<name>_dataset_builder.py` defining `Builder` and a `dummy_data/` fixture tree in
the real layout. TFDS names are prefixed with `advseg_` so they never clash with TFDS's own
builders (TFDS ships a different `cityscapes`).
"""
