"""AdvSemiSeg (Hung et al., BMVC 2018) on PASCAL VOC 2012 + SBD (`voc_aug`): docs/FIDELITY.md §6.

    python -m advseg_jax train --config configs/voc.py:semi_0.125 --workdir runs/voc_semi_0.125 \
        --config.init.checkpoint=resnet101COCO-41f33a49.pth

ARG = METHOD_FRACTION[,runlocal] with
  METHOD    baseline   supervised only (the paper's "Baseline" row; §6.4, §9.1)
            adv        + L_adv on labelled predictions (`--lambda-semi 0 --lambda-semi-adv 0`)
            semi       + L_adv + L_semi (the README command, "Table 5"; alias adv_semi)
  FRACTION  0.125 | 0.25 | 0.5 | 1.0 (also 1/8, 1/4, 1/2, full) labelled share of train_aug
semi_1.0 does not exist (no unlabelled data; N/A in the paper). Default: semi_0.125.
The adv_* presets train D on labelled predictions only: the pre-BMVC code's behaviour; the
released train.py crashes with `--lambda-semi 0 --lambda-semi-adv 0` (§6.4).
Every value below is the original's; the bracket names the docs/FIDELITY.md section.
"""

from advseg_jax.config import defaults, presets

FRACTIONS = {"0.125": 0.125, "1/8": 0.125, "0.25": 0.25, "1/4": 0.25, "0.5": 0.5, "1/2": 0.5,
             "1.0": 1.0, "1": 1.0, "full": 1.0}
METHODS = ("baseline", "adv", "semi")
PRESETS = tuple(f"{m}_{f}" for m in METHODS for f in ("0.125", "0.25", "0.5", "1.0")
                if (m, f) != ("semi", "1.0"))


def parse(name):
  name = name.replace("adv_semi", "semi")
  method, _, frac = name.rpartition("_")
  if method not in METHODS or frac not in FRACTIONS:
    raise presets.unknown_preset("configs/voc.py", name, PRESETS)
  if method == "semi" and FRACTIONS[frac] == 1.0:
    raise ValueError("configs/voc.py: semi_1.0 does not exist: with every image labelled there "
                     "is no unlabelled data for L_semi (N/A in the paper, §9.1); use adv_1.0")
  return method, FRACTIONS[frac]


def get_config(arg=None):
  name, options = presets.parse_arg(arg, "semi_0.125")
  method, fraction = parse(name)
  c = defaults.base_config()
  c.seed = 1234                       # [§6.1] --random-seed (unused there, seeds us)
  c.num_steps = 20000                 # [§6.1] --num-steps
  c.num_steps_stop = None             # the originals train all 20000 steps
  c.batch_size = 10                   # [§6.1] --batch-size (labelled, unlabelled and GT each)
  c.iter_size = 1                     # [§6.1] --iter-size
  c.labelled_fraction = fraction      # [§6.1] --partial-data (README: 0.125)
  c.checkpoint_every = 5000           # [§6.1] --save-pred-every
  c.eval_every = 5000                 # evaluate where the original saved snapshots
  c.log_every = 10

  c.method.name = "supervised" if method == "baseline" else "advsemi"
  c.method.gan = "vanilla"            # [§5] BCEWithLogitsLoss2d
  c.method.lambda_adv = 0.01          # [§6.1] README --lambda-adv-pred 0.01 (argparse 0.1)
  c.method.lambda_semi = 0.1 if method == "semi" else 0.0        # [§6.1] --lambda-semi
  c.method.lambda_semi_adv = 0.001 if method == "semi" else 0.0  # [§6.1] --lambda-semi-adv
  c.method.mask_T = 0.2               # [§6.1] README --mask-T 0.2
  c.method.semi_start = 5000          # [§6.1] README --semi-start 5000
  c.method.semi_start_adv = 0         # [§6.1] --semi-start-adv
  c.method.d_remain = True            # [§6.1] --D-remain (type=bool: always True)

  c.model.arch = "deeplabv2"          # [§1] Res_Deeplab
  c.model.num_classes = 21            # [§6.1] --num-classes
  c.model.depths = "resnet101"        # [§1.1]
  c.model.aspp_branches_used = 2      # [§1.2] released models' early-return ASPP
  c.model.bn_mode = "batch_stats"     # [§1.1] model.train(), affine frozen
  c.disc.arch = "fc"                  # [§4.1] FCDiscriminator, ndf 64
  c.disc.ndf = 64

  c.optim_g.lr = 2.5e-4               # [§6.1] --learning-rate (classifier 10x, §1.5)
  c.optim_g.momentum = 0.9            # [§6.1]
  c.optim_g.weight_decay = 5e-4       # [§6.1]
  c.optim_g.power = 0.9               # [§6.1] poly
  c.optim_g.legacy_duplicate_updates = True   # [§1.5] one update per listing (3x / 4x convs)
  c.optim_g.duplicate_rule = "torch0.4"       # [§1.5] as PyTorch 0.2-0.4 trained them
  c.optim_d.name = "adam"             # [§4.1] Adam(betas 0.9, 0.99)
  c.optim_d.lr = 1e-4                 # [§6.1] --learning-rate-D
  c.optim_d.power = 0.9               # [§6.1] same poly decay

  c.data = defaults.stream_config(
      "voc_aug", split="train",
      crop_size=(321, 321),           # [§6.1] --input-size 321,321
      channel_order="RGB",            # [§6.5] step 6: the BGR->RGB flip, so RGB input
      random_scale=False,             # [§6.1] README command: no --random-scale
      random_mirror=False,            # [§6.1] README command: no --random-mirror
      gt_loader="advsemi")            # [§6.5] VOCGTDataSet for D's real one-hots ('gt' stream)
  c.eval_data = defaults.stream_config(
      "voc_aug", split="validation", crop_size=None, channel_order="RGB",
      eval_mode="pad", eval_pad_size=(505, 505))  # [§6.6] evaluate_voc.py
  c.eval_mean_mode = "voc"            # [§6.6] jaccard(): mean over classes with TP > 0

  c.init.rule = "advsemi"             # [§3.3] copy entries whose name and shape match
  c.init.checkpoint = None            # resnet101COCO-41f33a49.pth (§3.2), user supplied
  return presets.apply_options(c, options)
