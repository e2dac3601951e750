"""The cells of the `digits_m` quality table (issue 22): real handwritten digits, on black
(`digits_m/source`) and blended over real photos (`digits_m/target`, MNIST-M construction).

    python -m advseg_jax train --config configs/digits.py:semi_1/8 --workdir runs/x
    python benchmarks/quality/digits.py --quick          # the whole table, one seed per cell

ARG[,runlocal]:
  semi-supervised, trained and evaluated on digits_m/source (validation):
    sup_1/16   sup_1/8    supervised, 1/16 or 1/8 of the 2000 source images labelled
    adv_1/16   adv_1/8    AdvSemiSeg L_adv only (lambda_adv 0.01) [§6.1]
    semi_1/16  semi_1/8   AdvSemiSeg L_adv + L_semi (0.01, 0.1, semi-adv 0.001, T 0.2) [§6.1]
    sup_full              supervised, every image labelled (the ceiling)
  domain adaptation, digits_m/source (labelled) -> digits_m/target, evaluated on target
  validation:
    source_only      supervised on source only: no target image reaches G, so BN's running
                     statistics are source statistics
    source_only_tbn  source only with target images in BN: the AdaptSegNet run with every
                     adversarial weight 0, so target images reach G only through the BN
                     statistics of its joint train-mode batches (a second BN treatment of
                     the source-only baseline; the benchmark also scores both source-only
                     cells with BN statistics recomputed on target images, `evaluate
                     --bn_stats_from`)
    single           AdaptSegNet single-level (lambda_seg 0, adv_aux 0, adv 0.001) [§7.1]
    multi            AdaptSegNet multi-level (0.1, 0.0002, 0.001) [§7.1]
    lsgan            AdaptSegNet single-level LS-GAN (0, 0, 0.01, gan 'ls') [§7.1]
    oracle           supervised on the labelled target train split (the ceiling)

benchmarks/quality/digits.py starts every adaptation cell of a seed from one shared source
pretraining (this file's `source_only` cell run first, `init.checkpoint`); run alone, a
preset starts from the random initialisation.

Network (every cell alike): DeepLab-v2 with a tiny ResNet (one bottleneck per stage, width
16, output stride 8) and ASPP, no pretrained weights, so G's learning rate is 20x the
originals' (5e-3); the fully convolutional D of width 16 with three stride-2 convs of its
five (`disc.num_downsamples=3`: a 12x12 map on the 96x96 scenes, where the originals' five
give 3x3, too coarse for AdvSemiSeg's per-pixel confidence map). All adaptation cells use
the two-head network (DeeplabMulti), like AdaptSegNet. Method hyper-parameters are the
originals' (docs/FIDELITY.md §6.1, §7.1).

BN: the adaptation cells that pass target images through G (`source_only_tbn` and the three
AdaptSegNet cells) run source and target as one train-mode batch (`method.bn_domains=
'joint'`), so BN normalises both with the same statistics; the originals' separate passes
(each domain normalised with its own batch statistics during training, evaluation with the
mixed running statistics) let G solve each domain in its own normalisation, which evaluation
does not reproduce. `source_only` never sees a target image. The semi-supervised cells keep
the originals' separate passes (one domain). A method and its baseline share network,
schedule (`NUM_STEPS` steps at batch 8, poly decay), BN treatment and seed (which fixes the
labelled subset and the initialisation). No random mirroring (a mirrored digit is not a
digit). Section marks such as [§7.1] name sections of docs/FIDELITY.md.
"""

from advseg_jax.config import defaults, presets

SEMI = ("sup_1/16", "adv_1/16", "semi_1/16", "sup_1/8", "adv_1/8", "semi_1/8", "sup_full")
ADAPT = ("source_only", "source_only_tbn", "single", "multi", "lsgan", "oracle")
PRESETS = SEMI + ADAPT
NUM_STEPS = 1500
SEMI_START_FRACTION = 0.25  # 5000 of 20000 in the original [§6.1]
# (lambda_seg, lambda_adv_aux, lambda_adv, gan) of the AdaptSegNet cells [§7.1].
ADAPTSEG_WEIGHTS = {
    "source_only_tbn": (0.0, 0.0, 0.0, "vanilla"),
    "single": (0.0, 0.0, 0.001, "vanilla"),
    "multi": (0.1, 0.0002, 0.001, "vanilla"),
    "lsgan": (0.0, 0.0, 0.01, "ls"),
}


def _stream(config_name: str, split: str, **kw):
  return defaults.stream_config("digits_m", config_name=config_name, split=split,
                                channel_order="RGB", read_threads=2, **kw)


def _method(c, name: str) -> None:
  """Method fields of cell `name`; the rest (mask_T 0.2, semi_start_adv 0, d_remain, vanilla
  GAN) stays at the originals' defaults of `base_config` [§6.1]."""
  m = c.method
  m.semi_start = int(round(SEMI_START_FRACTION * NUM_STEPS))
  is_semi = name.startswith("semi_")
  m.lambda_semi = 0.1 if is_semi else 0.0        # [§6.1]
  m.lambda_semi_adv = 0.001 if is_semi else 0.0  # [§6.1]
  m.lambda_adv = 0.01                            # AdvSemiSeg README --lambda-adv-pred [§6.1]
  m.name = "advsemi" if name.startswith(("adv_", "semi_")) else "supervised"
  if name in ("source_only", "oracle"):
    m.lambda_seg = 0.0                           # the main head only, like single-level
  elif name in ADAPTSEG_WEIGHTS:
    m.name = "adaptseg"
    m.lambda_seg, m.lambda_adv_aux, m.lambda_adv, m.gan = ADAPTSEG_WEIGHTS[name]
    m.bn_domains = "joint"                       # one BN batch of source + target (above)


def get_config(arg=None):
  name, options = presets.parse_arg(arg, "semi_1/8")
  if name not in PRESETS:
    raise presets.unknown_preset("configs/digits.py", name, PRESETS)
  adapt = name in ADAPT
  c = defaults.base_config()
  c.seed = 0
  c.num_steps = NUM_STEPS
  c.num_steps_stop = None
  c.batch_size = 8
  c.iter_size = 1
  c.labelled_fraction = {"1/16": 0.0625, "1/8": 0.125}.get(name.rpartition("_")[2], 1.0)
  c.log_every = 50
  c.eval_every = 150
  c.checkpoint_every = NUM_STEPS
  c.keep_checkpoints = 1
  c.eval_max_examples = 0               # the whole validation split (500 scenes)
  c.parallel.mode = "jit"

  c.model.arch = "deeplabv2_multi" if adapt else "deeplabv2"
  c.model.num_classes = 11              # background, digits 0-9
  c.model.depths = "tiny"               # (1, 1, 1, 1) bottlenecks
  c.model.width = 16
  c.model.bn_mode = "batch_stats"       # [§1.1] the originals' model.train()
  c.disc.arch = "fc"
  c.disc.ndf = 16
  c.disc.num_downsamples = 3            # a 12x12 D map on 96x96 scenes (above)
  c.optim_g.lr = 5e-3                   # 20x [§6.1]: no pretrained initialisation here
  c.optim_g.legacy_duplicate_updates = False  # [§1.5] the correction, as in demo.py
  c.optim_d.lr = 1e-4                   # [§6.1], [§7.1]
  _method(c, name)

  train_domain = "target" if name == "oracle" else "source"
  c.data = _stream(train_domain, "train", crop_size=(96, 96), random_mirror=False,
                   gt_loader="plain")
  c.target_data = _stream("target", "train", crop_size=(96, 96), random_mirror=False,
                          use_labels=False)
  c.eval_data = _stream("target" if adapt else "source", "validation", crop_size=None,
                        eval_mode="none")
  c.eval_mean_mode = "nanmean"
  return presets.apply_options(c, options)
