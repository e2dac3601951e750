"""AdaptSegNet SYNTHIA (RAND-CITYSCAPES) -> Cityscapes with 16 or 13 classes (§7, §9.2).

The original repository has no SYNTHIA loader or 13-class evaluation (AdaptSegNet issue #31):
everything below is the GTA5 -> Cityscapes setting (§7.1) with SYNTHIA as the source; the
source size is SYNTHIA's native 760x1280 (UNVERIFIED: the paper's resize is not in any code).
Evaluation maps Cityscapes trainIds to the 16 / 13 protocol classes.

ARG = LEVEL_CLASSES[,runlocal]:  single_16, multi_16, single_13, multi_13 (default multi_16).

Section marks such as [§7.1] name sections of docs/FIDELITY.md.
"""

from advseg_jax.config import defaults, presets

LEVELS = {
    "multi": (0.1, 0.0002, 0.001),    # [§7.1] README multi-level weights
    "single": (0.0, 0.0, 0.001),      # [§7.1] README single-level weights
}
PRESETS = tuple(f"{lv}_{k}" for lv in LEVELS for k in ("16", "13"))


def get_config(arg=None):
  name, options = presets.parse_arg(arg, "multi_16")
  level, _, classes = name.partition("_")
  if level not in LEVELS or classes not in ("16", "13"):
    raise presets.unknown_preset("configs/synthia_cityscapes.py", name, PRESETS)
  lambda_seg, lambda_aux, lambda_main = LEVELS[level]
  c = defaults.base_config()
  c.seed = 1234
  c.num_steps = 250000                # [§7.1] --num-steps
  c.num_steps_stop = 150000           # [§7.1] --num-steps-stop
  c.batch_size = 1                    # [§7.1]
  c.iter_size = 1
  c.labelled_fraction = 1.0
  c.checkpoint_every = 5000           # [§7.1] --save-pred-every
  c.eval_every = 5000
  c.log_every = 10

  c.method.name = "adaptseg"
  c.method.gan = "vanilla"            # [§7.1] --gan Vanilla
  c.method.lambda_seg = lambda_seg    # [§7.1] --lambda-seg
  c.method.lambda_adv_aux = lambda_aux  # [§7.1] --lambda-adv-target1
  c.method.lambda_adv = lambda_main   # [§7.1] --lambda-adv-target2
  c.method.lambda_semi = 0.0
  c.method.lambda_semi_adv = 0.0

  c.model.arch = "deeplabv2_multi"    # [§2]
  c.model.num_classes = int(classes)  # [§9.2] SYNTHIA protocols: 16 or 13 classes
  c.model.depths = "resnet101"
  c.model.aspp_branches_used = 2      # [§1.2]
  c.model.bn_mode = "batch_stats"     # [§1.1]
  c.disc.arch = "fc"                  # [§4.1]
  c.disc.ndf = 64

  c.optim_g.lr = 2.5e-4               # [§7.1]
  c.optim_g.momentum = 0.9
  c.optim_g.weight_decay = 5e-4
  c.optim_g.power = 0.9
  c.optim_g.legacy_duplicate_updates = True   # [§1.5] one update per listing (3x / 4x convs)
  c.optim_g.duplicate_rule = "torch0.4"       # [§1.5] as PyTorch 0.2-0.4 trained them
  c.optim_d.name = "adam"             # [§7.1]
  c.optim_d.lr = 1e-4
  c.optim_d.power = 0.9

  c.data = defaults.stream_config(
      "synthia", config_name=classes, split="train", crop_size=None,
      resize_size=(760, 1280),        # native SYNTHIA size (UNVERIFIED, see docstring)
      channel_order="BGR")            # [§7.3] AdaptSegNet feeds BGR
  c.target_data = defaults.stream_config(
      "cityscapes", split="train", crop_size=None, resize_size=(512, 1024),  # [§7.1]
      channel_order="BGR", use_labels=False)
  c.eval_data = defaults.stream_config(
      "cityscapes", split="validation", crop_size=None, channel_order="BGR",
      eval_mode="resize", eval_resize_size=(512, 1024))  # [§7.4]
  c.eval_mean_mode = "nanmean"        # [§7.4] compute_iou.py

  # [§3.3] AdaptSegNet's rule only skips layer5 for 19 classes (with 16/13 the original would
  # fail on the shape of the 21-class layer5): copy what matches in name and shape instead.
  c.init.rule = "advsemi"
  c.init.checkpoint = None
  return presets.apply_options(c, options)
