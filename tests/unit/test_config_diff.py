"""Resume check: which config differences refuse a resume."""

import pytest

from advseg_jax.config.defaults import base_config
from advseg_jax.config.diff import ABSENT, config_differences, config_to_dict


def _saved_without(field_path):
  saved = config_to_dict(base_config())
  *parents, leaf = field_path.split(".")
  node = saved
  for p in parents:
    node = node[p]
  del node[leaf]
  return saved


def test_a_field_added_later_at_its_default_is_no_difference():
  saved = _saved_without("method.lambda_semi")
  assert config_differences(saved, config_to_dict(base_config())) == []


@pytest.mark.parametrize("field", [
    "split_rule", "data.std_bgr", "data.crop_mode", "data.ignore_as_background",
    "eval_data.std_bgr", "eval_data.eval_pad_fill", "eval_data.ignore_as_background",
    "target_data.std_bgr"])
def test_the_iclr2018_data_fields_added_later_resume_at_their_defaults(field):
  """Runs saved before the ICLR-2018 data fields existed resume without a difference; a run
  that sets one (configs/iclr2018.py) differs from such a saved config."""
  saved = _saved_without(field)
  assert config_differences(saved, config_to_dict(base_config())) == []
  new = base_config()
  section, _, name = field.rpartition(".")
  node = new[section] if section else new
  node[name] = {"split_rule": "iclr2018", "std_bgr": (57.0, 57.1, 58.4),
                "crop_mode": "random_sized", "ignore_as_background": True,
                "eval_pad_fill": "black"}[name]
  assert [d[0] for d in config_differences(saved, config_to_dict(new))] == [field]


def test_a_field_added_later_away_from_its_default_is_a_difference():
  saved = _saved_without("method.lambda_semi")
  new = base_config()
  new.method.lambda_semi = float(new.method.lambda_semi) + 0.5
  diffs = config_differences(saved, config_to_dict(new))
  assert diffs == [("method.lambda_semi", ABSENT, new.method.lambda_semi)]


def test_a_changed_field_and_a_removed_field_are_differences():
  saved = config_to_dict(base_config())
  new = base_config()
  new.seed = int(new.seed) + 1
  new_dict = config_to_dict(new)
  del new_dict["method"]["lambda_semi"]
  fields = [d[0] for d in config_differences(saved, new_dict)]
  assert fields == ["method.lambda_semi", "seed"]


def test_operational_fields_may_change():
  new = base_config()
  new.log_every = int(new.log_every) + 7
  assert config_differences(config_to_dict(base_config()), config_to_dict(new)) == []
