"""Datasets (TFDS array_record builders) and grain input pipelines.

Public API:

  from advseg_jax import data
  data.get_info(name)                    # DatasetInfo: num_classes, class_names, palette, ...
  data.dataset_config(**overrides)       # ml_collections stream config
  data.make_train_iterator(cfg, split=..., indices=None, batch_size=..., seed=...,
                           process_index=0, process_count=1)
  data.make_eval_iterator(cfg, split=..., batch_size=1, process_index=0, process_count=1)
  data.num_examples(cfg, split)
  data.ensure_prepared(name, data_dir)   # builds 'shapes' on the fly
  data.prepare_dataset(name, data_dir=..., manual_dir=...)

Batches stay on the host (numpy); `advseg_jax.train.parallel` puts them on devices.
Importing this package does not import tensorflow_datasets or grain (they load lazily).
"""

from advseg_jax.data import splits
from advseg_jax.data.config import dataset_config
from advseg_jax.data.errors import BadExampleError, LayoutError
from advseg_jax.data.pipeline import make_eval_iterator, make_train_iterator, num_examples
from advseg_jax.data.prepare import PrepareResult, ensure_prepared, prepare_dataset
from advseg_jax.data.registry import DatasetInfo, dataset_names, get_info

__all__ = [
    "BadExampleError", "DatasetInfo", "LayoutError", "PrepareResult", "dataset_config",
    "dataset_names", "ensure_prepared", "get_info", "make_eval_iterator",
    "make_train_iterator", "num_examples", "prepare_dataset", "splits",
]
