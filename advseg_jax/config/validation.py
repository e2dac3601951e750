"""Validation of a training config: `validate(config)` names the first invalid field."""

from __future__ import annotations

from typing import Any, Iterable, Optional, Tuple

from advseg_jax import methods
from advseg_jax.data.pipeline import CROP_MODES, PAD_FILLS
from advseg_jax.data.splits import SPLIT_RULES
from advseg_jax.kernels.selection import ASPP_IMPLS, CONV_DX_IMPLS, POINTWISE_IMPLS
from advseg_jax.models.registry import DISCRIMINATOR_ARCHS, DTYPES, GENERATOR_ARCHS
from advseg_jax.models.resnet import RESNET_DEPTHS
from advseg_jax.precision import needs_x64

INIT_RULES = ("strict", "advsemi", "adaptseg", "torchvision")  # advseg_jax.torch_port.convert.RULES
DUPLICATE_RULES = ("torch0.4", "torch2")  # advseg_jax.train.optim.DUPLICATE_RULES


class ConfigError(ValueError):
  """An invalid config value; the message names the field."""


_X64_NOTE = ("'float64' only with 64-bit JAX (JAX_ENABLE_X64=1); it is for numerical "
             "checks, training uses 'float32' or 'bfloat16'")


def _check(cond: bool, field: str, expected: str, value: Any) -> None:
  if not cond:
    raise ConfigError(f"config.{field} = {value!r} is invalid: expected {expected}")


def _is_num(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _pair(v: Any) -> Optional[Tuple[int, int]]:
  if v is None:
    return None
  if isinstance(v, Iterable) and not isinstance(v, str):
    v = tuple(v)
    if len(v) == 2 and all(isinstance(x, int) and x > 0 for x in v):
      return v
  raise TypeError


def _check_stream(c: Any, prefix: str) -> None:
  _check(isinstance(c.name, str) and bool(c.name), f"{prefix}.name", "a dataset name", c.name)
  for f in ("crop_size", "resize_size", "eval_pad_size", "eval_resize_size"):
    try:
      _pair(c[f])
    except TypeError:
      _check(False, f"{prefix}.{f}", "None or two positive ints (h, w)", c[f])
  _check(c.channel_order in ("RGB", "BGR", None), f"{prefix}.channel_order",
         "'RGB', 'BGR' or None (the dataset's default)", c.channel_order)
  _check(len(tuple(c.mean_bgr)) == 3 and all(_is_num(x) for x in c.mean_bgr),
         f"{prefix}.mean_bgr", "three numbers (B, G, R)", c.mean_bgr)
  std = c.get("std_bgr")
  _check(std is None or (isinstance(std, Iterable) and len(tuple(std)) == 3
                         and all(_is_num(x) and x > 0 for x in std)),
         f"{prefix}.std_bgr", "None or three positive numbers (B, G, R, 0-255 scale)", std)
  _check(c.gt_loader in ("plain", "advsemi"), f"{prefix}.gt_loader", "'plain' or 'advsemi'",
         c.gt_loader)
  mode = c.get("crop_mode", "random")
  _check(mode in CROP_MODES, f"{prefix}.crop_mode",
         "'random' (pad + random crop) or 'random_sized' (RandomSizedCrop)", mode)
  _check(mode == "random" or (c.crop_size is not None and c.gt_loader == "plain"),
         f"{prefix}.crop_mode", "'random' unless crop_size is set and gt_loader is 'plain'", mode)
  _check(c.eval_mode in ("pad", "resize", "none"), f"{prefix}.eval_mode",
         "'pad', 'resize' or 'none'", c.eval_mode)
  _check(c.get("eval_pad_fill", "mean") in PAD_FILLS, f"{prefix}.eval_pad_fill",
         "'mean' (0 after normalisation) or 'black' (RGB 0 before it)", c.get("eval_pad_fill"))
  _check(isinstance(c.num_workers, int) and c.num_workers >= 0, f"{prefix}.num_workers",
         "an int >= 0", c.num_workers)
  _check(isinstance(c.read_threads, int) and c.read_threads >= 1, f"{prefix}.read_threads",
         "an int >= 1", c.read_threads)
  _check(isinstance(c.split, str) and bool(c.split), f"{prefix}.split",
         "a split name such as 'train' or 'validation'", c.split)
  factors = tuple(c.scale_factors) if isinstance(c.scale_factors, Iterable) else ()
  _check(bool(factors) and all(_is_num(x) and 0 < x <= 8 for x in factors),
         f"{prefix}.scale_factors", "a non-empty list of numbers in (0, 8]", c.scale_factors)


def _check_method(c: Any) -> None:
  m = c.method
  _check(m.name in methods.METHODS, "method.name", f"one of {methods.METHODS}", m.name)
  _check(m.gan in ("vanilla", "ls", "softmax2"), "method.gan", "'vanilla', 'ls' or 'softmax2'",
         m.gan)
  bn_domains = m.get("bn_domains", "separate")
  _check(bn_domains in methods.BN_DOMAINS, "method.bn_domains", f"one of {methods.BN_DOMAINS}",
         bn_domains)
  _check(bn_domains == "separate" or m.name in ("advsemi", "adaptseg"), "method.bn_domains",
         "'separate' unless method.name is 'advsemi' or 'adaptseg' (one stream)", bn_domains)
  for f in ("lambda_adv", "lambda_semi", "lambda_semi_adv", "lambda_seg", "lambda_adv_aux"):
    _check(_is_num(m[f]) and m[f] >= 0, f"method.{f}", "a number >= 0", m[f])
  _check(_is_num(m.mask_T) and 0 <= m.mask_T <= 1, "method.mask_T", "a number in [0, 1]",
         m.mask_T)
  _check(_is_num(m.real_label_smoothing) and 0 <= m.real_label_smoothing < 0.5,
         "method.real_label_smoothing", "a number in [0, 0.5)", m.real_label_smoothing)
  _check(_is_num(m.get("d_instance_noise", 0.0)) and 0 <= m.get("d_instance_noise", 0.0) <= 1,
         "method.d_instance_noise", "a number in [0, 1] (std of the noise on D's inputs)",
         m.get("d_instance_noise"))
  _check(isinstance(m.get("d_update_every", 1), int) and m.get("d_update_every", 1) >= 1,
         "method.d_update_every", "an int >= 1", m.get("d_update_every"))
  for f in ("semi_start", "semi_start_adv"):
    _check(isinstance(m[f], int) and m[f] >= 0, f"method.{f}", "an int >= 0", m[f])
  _check(m.label_encoding in methods.LABEL_ENCODINGS, "method.label_encoding",
         f"one of {methods.LABEL_ENCODINGS}", m.label_encoding)
  _check((m.gan == "softmax2") == (c.disc.arch == "fc2") or m.name == "supervised",
         "method.gan", "'softmax2' exactly when disc.arch == 'fc2'", m.gan)
  p = m.get("labelled_probability", 1.0)
  _check(_is_num(p) and 0 < p <= 1, "method.labelled_probability", "a number in (0, 1]", p)
  _check(isinstance(m.get("alternation_seed", 0), int), "method.alternation_seed", "an int",
         m.get("alternation_seed"))
  if m.name == "iclr2018":
    _check_iclr2018(c)


def _check_iclr2018(c: Any) -> None:
  """The D-first step supports none of the generic step's extras."""
  m = c.method
  _check(m.gan == "softmax2", "method.gan", "'softmax2' for method 'iclr2018'", m.gan)
  _check(c.iter_size == 1, "iter_size", "1 for method 'iclr2018'", c.iter_size)
  _check(m.get("d_update_every", 1) == 1, "method.d_update_every",
         "1 for method 'iclr2018'", m.get("d_update_every"))
  _check(m.get("d_instance_noise", 0.0) == 0, "method.d_instance_noise",
         "0 for method 'iclr2018'", m.get("d_instance_noise"))
  _check(not c.diagnostics.grad_norms, "diagnostics.grad_norms", "False for method 'iclr2018'",
         c.diagnostics.grad_norms)
  _check(m.labelled_probability >= 1.0 or c.labelled_fraction < 1.0,
         "method.labelled_probability", "1.0 when labelled_fraction is 1.0 (no unlabelled data)",
         m.labelled_probability)


def _check_models(c: Any) -> None:
  m, g = c.method, c.model
  _check(g.arch in GENERATOR_ARCHS, "model.arch", f"one of {GENERATOR_ARCHS}", g.arch)
  _check(isinstance(g.num_classes, int) and g.num_classes >= 2, "model.num_classes",
         "an int >= 2", g.num_classes)
  depths_ok = (g.depths in RESNET_DEPTHS) if isinstance(g.depths, str) else (
      len(tuple(g.depths)) == 4 and all(isinstance(d, int) and d >= 1 for d in g.depths))
  _check(depths_ok, "model.depths", f"one of {sorted(RESNET_DEPTHS)} or 4 positive ints",
         g.depths)
  _check(isinstance(g.width, int) and g.width >= 4, "model.width", "an int >= 4", g.width)
  _check(g.aspp_branches_used in (1, 2, 3, 4), "model.aspp_branches_used", "1..4 (2 = released)",
         g.aspp_branches_used)
  _check(g.bn_mode in ("batch_stats", "frozen"), "model.bn_mode", "'batch_stats' or 'frozen'",
         g.bn_mode)
  _check(g.dtype in DTYPES, "model.dtype", f"one of {sorted(DTYPES)}", g.dtype)
  _check(not needs_x64(g.dtype), "model.dtype", _X64_NOTE, g.dtype)
  _check(g.get("pointwise_impl", "dot") in POINTWISE_IMPLS, "model.pointwise_impl",
         f"one of {POINTWISE_IMPLS}", g.get("pointwise_impl"))
  _check(g.get("conv_dx_impl", "auto") in CONV_DX_IMPLS, "model.conv_dx_impl",
         f"one of {CONV_DX_IMPLS}", g.get("conv_dx_impl"))
  _check(g.get("aspp_impl", "auto") in ASPP_IMPLS, "model.aspp_impl",
         f"one of {ASPP_IMPLS}", g.get("aspp_impl"))
  _check(c.disc.arch in DISCRIMINATOR_ARCHS, "disc.arch", f"one of {DISCRIMINATOR_ARCHS}",
         c.disc.arch)
  _check((c.disc.arch == "image_label") == (m.name == "luc") or m.name == "supervised",
         "disc.arch", "'image_label' exactly for method 'luc'", c.disc.arch)


def _check_optimisers(c: Any) -> None:
  for prefix in ("optim_g", "optim_d"):
    o = c[prefix]
    _check(_is_num(o.lr) and o.lr > 0, f"{prefix}.lr", "a number > 0", o.lr)
    _check(_is_num(o.power) and o.power >= 0, f"{prefix}.power", "a number >= 0", o.power)
    _check(_is_num(o.weight_decay) and o.weight_decay >= 0, f"{prefix}.weight_decay",
           "a number >= 0", o.weight_decay)
    _check(_is_num(o.momentum) and 0 <= o.momentum < 1, f"{prefix}.momentum", "in [0, 1)",
           o.momentum)
  _check(isinstance(c.optim_g.legacy_duplicate_updates, bool),
         "optim_g.legacy_duplicate_updates", "True or False",
         c.optim_g.legacy_duplicate_updates)
  _check(c.optim_g.get("duplicate_rule", "torch0.4") in DUPLICATE_RULES,
         "optim_g.duplicate_rule", f"one of {DUPLICATE_RULES}",
         c.optim_g.get("duplicate_rule"))
  _check(c.optim_d.name in ("adam", "sgd"), "optim_d.name", "'adam' or 'sgd'", c.optim_d.name)


def _check_schedule(c: Any, num_devices: int) -> None:
  m = c.method
  for f in ("num_steps", "batch_size", "iter_size", "log_every", "eval_every",
            "checkpoint_every", "keep_checkpoints"):
    _check(isinstance(c[f], int) and c[f] >= 1, f, "an int >= 1", c[f])
  _check(c.num_steps_stop is None or (isinstance(c.num_steps_stop, int)
                                      and 1 <= c.num_steps_stop <= c.num_steps),
         "num_steps_stop", "None or an int in [1, num_steps]", c.num_steps_stop)
  _check(c.get("eval_mean_mode", "auto") in ("auto", "voc", "nanmean", "all"), "eval_mean_mode",
         "'auto', 'voc', 'nanmean' or 'all'", c.get("eval_mean_mode"))
  _check(isinstance(c.eval_max_examples, int) and c.eval_max_examples >= 0, "eval_max_examples",
         "an int >= 0", c.eval_max_examples)
  _check(_is_num(c.labelled_fraction) and 0 < c.labelled_fraction <= 1, "labelled_fraction",
         "a number in (0, 1]", c.labelled_fraction)
  _check(c.get("split_rule", "advsemi") in SPLIT_RULES, "split_rule",
         f"one of {SPLIT_RULES}", c.get("split_rule"))
  _check(c.parallel.mode in ("pmap", "shard_map", "jit"), "parallel.mode",
         "'pmap', 'shard_map' or 'jit'", c.parallel.mode)
  per_step = c.batch_size * c.iter_size  # each stream yields batch_size per sub-iteration
  _check(per_step % max(num_devices, 1) == 0, "batch_size",
         f"a multiple of the device count ({num_devices})", c.batch_size)
  _check((per_step // max(num_devices, 1)) % c.iter_size == 0, "iter_size",
         f"a divisor of the per-device batch ({per_step // max(num_devices, 1)})", c.iter_size)
  if m.name == "advsemi" and c.labelled_fraction >= 1.0:
    _check(m.lambda_semi == 0 and m.lambda_semi_adv == 0, "method.lambda_semi",
           "0 (with lambda_semi_adv 0) when labelled_fraction is 1.0: there is no unlabelled "
           "data", m.lambda_semi)


def _check_data_diagnostics_init(c: Any) -> None:
  for prefix in ("data", "target_data", "eval_data"):
    _check_stream(c[prefix], prefix)
  _check(isinstance(c.diagnostics.d_wins_patience, int) and c.diagnostics.d_wins_patience >= 1,
         "diagnostics.d_wins_patience", "an int >= 1", c.diagnostics.d_wins_patience)
  _check(_is_num(c.diagnostics.d_wins_threshold) and 0 <= c.diagnostics.d_wins_threshold < 1,
         "diagnostics.d_wins_threshold", "a D loss in [0, 1)", c.diagnostics.d_wins_threshold)
  _check(_is_num(c.diagnostics.d_collapse_accuracy)
         and 0.5 <= c.diagnostics.d_collapse_accuracy <= 1, "diagnostics.d_collapse_accuracy",
         "an accuracy in [0.5, 1]", c.diagnostics.d_collapse_accuracy)
  _check(isinstance(c.disc.ndf, int) and c.disc.ndf >= 1, "disc.ndf", "an int >= 1", c.disc.ndf)
  nd = c.disc.get("num_downsamples", 5)
  _check(nd in (1, 2, 3, 4, 5), "disc.num_downsamples", "1..5", nd)
  _check(nd == 5 or c.disc.arch == "fc", "disc.num_downsamples",
         "5 unless disc.arch == 'fc'", nd)
  _check(c.disc.dtype in DTYPES, "disc.dtype", f"one of {sorted(DTYPES)}", c.disc.dtype)
  _check(not needs_x64(c.disc.dtype), "disc.dtype", _X64_NOTE, c.disc.dtype)
  _check(isinstance(c.seed, int), "seed", "an int", c.seed)
  _check(c.init.rule in INIT_RULES, "init.rule", f"one of {INIT_RULES}", c.init.rule)


def validate(c: Any, *, num_devices: int = 1) -> None:
  """Raises ConfigError naming the first invalid field."""
  _check_method(c)
  _check_models(c)
  _check_optimisers(c)
  _check_schedule(c, num_devices)
  _check_data_diagnostics_init(c)
