"""AdaptSegNet (Tsai et al., CVPR 2018) GTA5 -> Cityscapes: docs/FIDELITY.md §7.

    python -m advseg_jax train --config configs/gta5_cityscapes.py:multi --workdir runs/gta2city \
        --config.init.checkpoint=DeepLab_resnet_pretrained_init-f81d91e8.pth

ARG[,runlocal] (README presets, §7.1):
  multi           --lambda-seg 0.1 --lambda-adv-target1 0.0002 --lambda-adv-target2 0.001
  single          --lambda-seg 0.0 --lambda-adv-target1 0.0 --lambda-adv-target2 0.001
  lsgan           --lambda-seg 0.0 --lambda-adv-target1 0.0 --lambda-adv-target2 0.01 --gan LS
  multi_torch04   multi with the README's smaller weights for the PyTorch-0.4 code
                  (--lambda-adv-target1 0.00005 --lambda-adv-target2 0.0005)
All use DeeplabMulti and two discriminators, as the script does (in single-level mode D1 is
still trained but never reaches G, §7.2). Default: multi.

Section marks such as [§7.1] name sections of docs/FIDELITY.md.
"""

from advseg_jax.config import defaults, presets

LEVELS = {
    # name: (lambda_seg, lambda_adv_target1, lambda_adv_target2, gan)
    "multi": (0.1, 0.0002, 0.001, "vanilla"),
    "single": (0.0, 0.0, 0.001, "vanilla"),
    "lsgan": (0.0, 0.0, 0.01, "ls"),
    "multi_torch04": (0.1, 0.00005, 0.0005, "vanilla"),
}


def get_config(arg=None):
  name, options = presets.parse_arg(arg, "multi")
  if name not in LEVELS:
    raise presets.unknown_preset("configs/gta5_cityscapes.py", name, LEVELS)
  lambda_seg, lambda_aux, lambda_main, gan = LEVELS[name]
  c = defaults.base_config()
  c.seed = 1234                       # [§7.1] --random-seed (unused there)
  c.num_steps = 250000                # [§7.1] --num-steps (poly schedule length)
  c.num_steps_stop = 150000           # [§7.1] --num-steps-stop (early stop)
  c.batch_size = 1                    # [§7.1] --batch-size: one source + one target image
  c.iter_size = 1                     # [§7.1] --iter-size
  c.labelled_fraction = 1.0           # every GTA5 image is labelled
  c.checkpoint_every = 5000           # [§7.1] --save-pred-every
  c.eval_every = 5000
  c.log_every = 10

  c.method.name = "adaptseg"
  c.method.gan = gan                  # [§7.1] --gan Vanilla | LS
  c.method.lambda_seg = lambda_seg    # [§7.1] --lambda-seg (aux CE)
  c.method.lambda_adv_aux = lambda_aux  # [§7.1] --lambda-adv-target1
  c.method.lambda_adv = lambda_main   # [§7.1] --lambda-adv-target2
  c.method.lambda_semi = 0.0          # (AdvSemiSeg only)
  c.method.lambda_semi_adv = 0.0

  c.model.arch = "deeplabv2_multi"    # [§2] DeeplabMulti: layer5 aux on layer3, layer6 main
  c.model.num_classes = 19            # [§7.1] --num-classes
  c.model.depths = "resnet101"
  c.model.aspp_branches_used = 2      # [§1.2] the released code's ASPP
  c.model.bn_mode = "batch_stats"     # [§1.1] model.train(), batch 1: per-image statistics
  c.disc.arch = "fc"                  # [§4.1] FCDiscriminator x2 (D1 aux, D2 main)
  c.disc.ndf = 64

  c.optim_g.lr = 2.5e-4               # [§7.1] --learning-rate (layer5+layer6 10x)
  c.optim_g.momentum = 0.9
  c.optim_g.weight_decay = 5e-4
  c.optim_g.power = 0.9
  c.optim_g.legacy_duplicate_updates = True   # [§1.5] one update per listing (3x / 4x convs)
  c.optim_g.duplicate_rule = "torch0.4"       # [§1.5] as PyTorch 0.2-0.4 trained them
  c.optim_d.name = "adam"             # [§7.1] Adam(betas 0.9, 0.99)
  c.optim_d.lr = 1e-4                 # [§7.1] --learning-rate-D
  c.optim_d.power = 0.9

  c.data = defaults.stream_config(
      "gta5", split="train", crop_size=None,
      resize_size=(720, 1280),        # [§7.1] --input-size 1280,720 (w,h), whole image, bicubic
      channel_order="BGR",            # [§7.3] RGB->BGR flip before the mean
      random_scale=False, random_mirror=False)  # [§7.1] the datasets ignore these flags
  c.target_data = defaults.stream_config(
      "cityscapes", split="train", crop_size=None,
      resize_size=(512, 1024),        # [§7.1] --input-size-target 1024,512
      channel_order="BGR", use_labels=False)     # [§7.3] target labels are never read
  c.eval_data = defaults.stream_config(
      "cityscapes", split="validation", crop_size=None, channel_order="BGR",
      eval_mode="resize", eval_resize_size=(512, 1024))  # [§7.4] 1024x512 in, 2048x1024 out
  c.eval_mean_mode = "nanmean"        # [§7.4] compute_iou.py

  c.init.rule = "adaptseg"            # [§3.3] strip 'Scale.', skip layer5 when 19 classes
  c.init.checkpoint = None            # DeepLab_resnet_pretrained_init-f81d91e8.pth (§3.2)
  return presets.apply_options(c, options)
