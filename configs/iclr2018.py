"""The ICLR-2018 reproduction of AdvSemiSeg (mohitzsh) on PASCAL VOC 2012 + SBD (`voc_aug`):
docs/FIDELITY.md §8.

    python -m advseg_jax train --config configs/iclr2018.py:adv_1.0 --workdir runs/iclr_adv \
        --config.init.checkpoint=MS_DeepLab_resnet_pretrained_COCO_init.pth

ARG = MODE_FRACTION[,runlocal] with
  MODE      base   `--mode base`: G alone (cross-entropy)
            adv    `--mode adv`: D first, then G's CE + 0.01 x adversarial term
            semi   `--mode semi`: each step labelled (as adv) or unlabelled (p = 0.5)
  FRACTION  1.0 | 0.5 (also full, 1/2) `--split`, the labelled share of train_aug; semi only
            at 0.5.

Its published figures (its README, mIoU % on VOC 2012 val; the AdvSemiSeg paper's in
brackets, docs/FIDELITY.md §9.1):

  | mode | full | 1/2 |
  | --- | --- | --- |
  | base | 69.98 (73.6) | 67.84 (69.8) |
  | adv  | 70.97 (74.9) | 68.89 (72.6) |
  | semi | n/a          | 69.05 (73.2) |

What the presets reproduce: the D-first iteration, the random labelled / unlabelled
alternation, D's summed loss, the nesterov one-group G optimiser with trainable BN, the
4-branch ASPP, the in-forward upsampling, the step counts of its 20 epochs and a validation
each epoch (the best model is kept), and its data pipeline [§8]: the ImageNet mean and std
normalisation (`data.std_bgr`), `RandomSizedCrop` to 321 (`data.crop_mode='random_sized'`),
the labelled subset of `np.random.seed(100)` (`split_rule='iclr2018'`; the same images as the
original's when `voc_aug` was prepared from AdvSemiSeg's `train_aug.txt`, which is its
`datasets/lists/train.txt` line for line), 255 counted as background in training and
validation (`ignore_as_background`), and `--val_orig` validation: the whole image
zero-padded to 513 before normalisation (`eval_pad_fill='black'`).
Not reproduced (docs/FIDELITY.md §8): the data order (the original reads only the chosen
loader each step and falls back to the other when one is exhausted within an epoch; here both
streams are read every step and the step uses one of them), and validation without
`--val_orig` (random 321 crops of each image).
Every value below is the original's (`train.py` argparse defaults); the bracket names the
docs/FIDELITY.md section.
"""

from advseg_jax.config import defaults, presets
# The ImageNet mean and std of its NormalizeOwn (utils/transforms.py:8-13) [§8].
from advseg_jax.normalization import IMAGENET_MEAN_BGR, IMAGENET_STD_BGR

FRACTIONS = {"1.0": 1.0, "1": 1.0, "full": 1.0, "0.5": 0.5, "1/2": 0.5}
MODES = ("base", "adv", "semi")
PRESETS = ("base_1.0", "adv_1.0", "base_0.5", "adv_0.5", "semi_0.5")
TRAIN_IMAGES = 10582     # [§8] datasets/lists/train.txt
EPOCHS = 20              # [§8] --max_epoch
BATCH = 10               # [§8] --batch_size, drop_last=True
MAX_ITER = 20000         # [§8] poly_lr_scheduler max_iter; the lr stays 0 after it


def parse(name):
  mode, _, frac = name.rpartition("_")
  if mode not in MODES or frac not in FRACTIONS:
    raise presets.unknown_preset("configs/iclr2018.py", name, PRESETS)
  if mode == "semi" and FRACTIONS[frac] == 1.0:
    raise ValueError("configs/iclr2018.py: semi_1.0 does not exist: with every image labelled "
                     "there is no unlabelled data; use adv_1.0")
  return mode, FRACTIONS[frac]


def steps_per_epoch(mode: str, fraction: float) -> int:
  """Batches per epoch: the labelled loader's (+ the unlabelled one's in semi mode)."""
  labelled = int(TRAIN_IMAGES * fraction)
  n = labelled // BATCH
  if mode == "semi":
    n += (TRAIN_IMAGES - labelled) // BATCH
  return n


def get_config(arg=None):
  name, options = presets.parse_arg(arg, "semi_0.5")
  mode, fraction = parse(name)
  epoch = steps_per_epoch(mode, fraction)
  c = defaults.base_config()
  c.seed = 0                          # [§8] random.seed(0), torch.manual_seed(0)
  c.num_steps = MAX_ITER              # [§8] the poly schedule's length
  total = EPOCHS * epoch              # [§8] 20 epochs; beyond MAX_ITER the lr is 0
  c.num_steps_stop = total if total < MAX_ITER else None
  c.batch_size = BATCH
  c.iter_size = 1
  c.labelled_fraction = fraction      # [§8] --split
  c.split_rule = "iclr2018"           # [§8] np.random.seed(100) + np.random.choice
  c.eval_every = epoch                # [§8] validation after every epoch, best kept
  c.checkpoint_every = epoch
  c.log_every = 10

  m = c.method
  m.name = "iclr2018"
  m.gan = "softmax2"                  # [§4.2] LogSoftmax + NLLLoss2d on a 2-class D
  m.lambda_adv = 0.0 if mode == "base" else 0.01    # [§8] --lam_adv (base: no D)
  m.lambda_semi_adv = 0.01            # [§8] unlabelled steps use --lam_adv too
  m.lambda_semi = 0.1                 # [§8] --lam_semi
  m.mask_T = 0.1                      # [§8] --t_semi
  m.semi_start = 0                    # [§8] --wait_semi 0 (epochs)
  m.real_label_smoothing = 0.1        # [§4.2] --d_label_smooth
  m.labelled_probability = 0.5 if mode == "semi" else 1.0  # [§8] random.random() < 0.5
  m.alternation_seed = 0              # [§8] random.seed(0)

  c.model.arch = "deeplabv2"          # [§8] ResDeeplab
  c.model.num_classes = 21
  c.model.depths = "resnet101"
  c.model.aspp_branches_used = 4      # [§8] the fixed ASPP (4 branches summed)
  c.model.bn_mode = "batch_stats"     # [§8] train mode; BN affine trained (iclr2018 optimiser)
  c.disc.arch = "fc2"                 # [§4.2] Dis
  c.disc.ndf = 64

  c.optim_g.lr = 2.5e-4               # [§8] --g_lr; one group, nesterov, all parameters
  c.optim_g.momentum = 0.9            # [§8]
  c.optim_g.weight_decay = 1e-4       # [§8]
  c.optim_g.power = 0.9               # [§8] poly_lr_scheduler
  c.optim_d.name = "sgd"              # [§4.2] --d_optim sgd
  c.optim_d.lr = 1e-4                 # [§4.2] --d_lr
  c.optim_d.momentum = 0.5            # [§4.2]
  c.optim_d.nesterov = True           # [§4.2]
  c.optim_d.weight_decay = 1e-4       # [§4.2]
  c.optim_d.power = 0.9

  c.data = defaults.stream_config(
      "voc_aug", split="train", crop_size=(321, 321),
      crop_mode="random_sized",       # [§8] RandomSizedCrop((321, 321))
      channel_order="RGB",            # [§8] PIL RGB input
      mean_bgr=IMAGENET_MEAN_BGR,     # [§8] ToTensor + NormalizeOwn
      std_bgr=IMAGENET_STD_BGR,
      ignore_as_background=True,      # [§8] IgnoreLabelClass
      random_scale=False, random_mirror=False)
  c.eval_data = defaults.stream_config(
      "voc_aug", split="validation", crop_size=None, channel_order="RGB",
      mean_bgr=IMAGENET_MEAN_BGR, std_bgr=IMAGENET_STD_BGR,
      ignore_as_background=True,      # [§8] IgnoreLabelClass on the validation labels too
      eval_mode="pad", eval_pad_size=(513, 513),  # [§8] --val_orig: ZeroPadding to 513 ...
      eval_pad_fill="black")          # [§8] ... of the raw image, before NormalizeOwn
  c.eval_mean_mode = "nanmean"        # [§8] utils/metrics.py scores(): nanmean of the IoUs

  c.init.rule = "advsemi"             # [§8] copy the COCO init's entries that match
  c.init.checkpoint = None            # MS_DeepLab_resnet_pretrained_COCO_init.pth, user supplied
  return presets.apply_options(c, options)
