"""Datasets (TFDS array_record builders) and grain input pipelines.

Public API::

    from advseg_jax import data
    data.get_info(name)                      # DatasetInfo: num_classes, class_names, palette, ...
    data.dataset_config(**overrides)         # ml_collections stream config
    data.make_train_iterator(cfg, split=..., indices=None, batch_size=..., seed=...,
                             process_index=0, process_count=1)
    data.make_eval_iterator(cfg, split=..., batch_size=1, process_index=0, process_count=1)
    data.num_examples(cfg, split)
    data.ensure_prepared(name, data_dir)     # builds 'shapes' on the fly
    data.prefetch_to_device(iterator, size=2)

Importing this package does not import tensorflow_datasets or grain (they load lazily).
"""

from advseg_jax.data.config import dataset_config
from advseg_jax.data.image_io import BadExampleError
from advseg_jax.data.pipeline import make_eval_iterator, make_train_iterator, num_examples
from advseg_jax.data.prefetch import prefetch_to_device, shard_batch
from advseg_jax.data.registry import DatasetInfo, dataset_names, get_info
from advseg_jax.data.source import ensure_prepared
from advseg_jax.data import splits

__all__ = [
    "BadExampleError", "DatasetInfo", "dataset_config", "dataset_names", "ensure_prepared",
    "get_info", "make_eval_iterator", "make_train_iterator", "num_examples",
    "prefetch_to_device", "shard_batch", "splits",
]
