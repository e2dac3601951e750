"""A complete adversarial run on the embedded synthetic `shapes` dataset (no download).

    python -m advseg_jax prepare shapes            # optional: train prepares it on first use
    python -m advseg_jax train --config configs/demo.py --workdir runs/demo

ARG[,runlocal]:
  semi      (default) AdvSemiSeg adv + semi on 1/4 labelled `shapes/source` (§6.3)
  adv       AdvSemiSeg adversarial only, all images labelled
  baseline  supervised only, 1/4 labelled (compare with semi)
  adaptseg  AdaptSegNet multi-level: labelled `shapes/source` -> unlabelled `shapes/target`,
            evaluated on the target validation split (§7.2)
A tiny ResNet (blocks (1,1,1,1), width 16) on 64x64 crops of the 128x128 images, 5 classes;
the run (800 steps) takes about 3-5 minutes on 2 CPU cores and reaches roughly 40-45% mIoU
on shapes/source validation (semi; 45.5% in our run). G's learning rate is 20x the
original's because there is no pretrained initialisation, and G's SGD updates each parameter
once (the correction of §1.5, with which that rate was tuned); everything else follows the
originals' algorithms.

Section marks such as [§7.1] name sections of docs/FIDELITY.md.
"""

from advseg_jax.config import defaults, presets

PRESETS = ("semi", "adv", "baseline", "adaptseg")


def get_config(arg=None):
  name, options = presets.parse_arg(arg, "semi")
  if name not in PRESETS:
    raise presets.unknown_preset("configs/demo.py", name, PRESETS)
  c = defaults.base_config()
  c.seed = 0
  c.num_steps = 800
  c.batch_size = 4
  c.iter_size = 1
  c.labelled_fraction = 1.0 if name in ("adv", "adaptseg") else 0.25
  c.log_every = 20
  c.eval_every = 200
  c.checkpoint_every = 200
  c.keep_checkpoints = 2
  c.eval_max_examples = 48
  c.diagnostics.d_wins_patience = 10  # logged rows (200 steps) with D loss < 0.2 -> warning

  c.model.arch = "deeplabv2_multi" if name == "adaptseg" else "deeplabv2"
  c.model.num_classes = 5             # background, disc, square, triangle, ring
  c.model.depths = "tiny"             # (1, 1, 1, 1) bottlenecks
  c.model.width = 16
  c.disc.ndf = 16
  c.optim_g.lr = 5e-3                 # 20x [§6.1]: no pretrained weights here
  c.optim_g.legacy_duplicate_updates = False  # [§1.5] the correction (each parameter once)
  c.optim_d.lr = 1e-4                 # [§6.1]

  c.method.name = {"semi": "advsemi", "adv": "advsemi", "baseline": "supervised",
                   "adaptseg": "adaptseg"}[name]
  c.method.lambda_adv = 0.01          # [§6.1] README --lambda-adv-pred
  c.method.lambda_semi = 0.1 if name == "semi" else 0.0     # [§6.1]
  c.method.lambda_semi_adv = 0.001 if name == "semi" else 0.0  # [§6.1]
  c.method.mask_T = 0.2               # [§6.1]
  c.method.semi_start = 200           # 5000 of 20000 in the original, roughly scaled
  if name == "adaptseg":
    c.method.lambda_seg = 0.1         # [§7.1] multi-level weights
    c.method.lambda_adv_aux = 0.0002
    c.method.lambda_adv = 0.001

  c.data = defaults.stream_config(
      "shapes", config_name="source", split="train", crop_size=(64, 64), channel_order="RGB",
      random_mirror=True, gt_loader="plain", read_threads=2)
  c.target_data = defaults.stream_config(
      "shapes", config_name="target", split="train", crop_size=(64, 64), channel_order="RGB",
      random_mirror=True, use_labels=False, read_threads=2)
  c.eval_data = defaults.stream_config(
      "shapes", config_name="target" if name == "adaptseg" else "source", split="validation",
      crop_size=None, channel_order="RGB", eval_mode="none", read_threads=2)
  c.eval_mean_mode = "nanmean"
  return presets.apply_options(c, options)
