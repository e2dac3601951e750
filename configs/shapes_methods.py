"""The eight runs of `benchmarks/quality/methods.py` on the embedded `shapes` source/target data.

    python -m advseg_jax train --config configs/shapes_methods.py:semi_1/8 --workdir runs/x

ARG[,runlocal] (letters as in the issue; the names are accepted too):
  a  sup_full      supervised, every `shapes/source` image labelled
  b  sup_1/8       supervised, 1/8 labelled (50 of 400 images)
  c  adv_1/8       AdvSemiSeg L_adv only, 1/8 labelled (§6.4 "adversarial only")
  d  semi_1/8      AdvSemiSeg L_adv + L_semi, 1/8 labelled (§6.1 README command)
  e  source_only   supervised on `shapes/source`, evaluated on `shapes/target` (no target
                   image is ever seen, so BN running statistics are source statistics)
  f  single        AdaptSegNet single-level (lambda_seg 0, lambda_adv1 0, lambda_adv2 0.001)
  g  multi         AdaptSegNet multi-level (0.1, 0.0002, 0.001)
  h  lsgan         AdaptSegNet single-level LS-GAN (0, 0, 0.01, --gan LS)
  i  bn_only       control for (e)-(h), not one of the issue's methods: the AdaptSegNet run
                   with every adversarial weight 0, so target images reach G only through
                   the BN statistics of its train-mode forward pass (AdaBN-like)
(a)-(d) are evaluated on `shapes/source` validation, (e)-(i) on `shapes/target` validation.

The model is the demo's (`configs/demo.py`): a tiny DeepLab-v2 (ResNet blocks (1,1,1,1),
width 16, 5 classes) without pretrained weights, so G's learning rate is 20x the originals'
(5e-3), and G's SGD updates each parameter once (the §1.5 correction, as in the demo); every
method hyper-parameter is the original's (docs/FIDELITY.md §6.1, §7.1). (e)-(h) all
use DeeplabMulti like the AdaptSegNet script (the single-level and LS-GAN runs train D1 but
never let it reach G). The step count here is the CPU profile's; `benchmarks/quality/methods.py`
overrides `num_steps`, `method.semi_start`, `eval_every` and the eval subset per profile.

Section marks such as [§7.1] name sections of docs/FIDELITY.md.
"""

from advseg_jax.config import defaults, presets

# letter: (name, description)
PRESETS = {
    "a": ("sup_full", "supervised, all labels"),
    "b": ("sup_1/8", "supervised, 1/8 labels"),
    "c": ("adv_1/8", "AdvSemiSeg L_adv, 1/8 labels"),
    "d": ("semi_1/8", "AdvSemiSeg L_adv + L_semi, 1/8 labels"),
    "e": ("source_only", "source only (shapes/source -> shapes/target)"),
    "f": ("single", "AdaptSegNet single-level"),
    "g": ("multi", "AdaptSegNet multi-level"),
    "h": ("lsgan", "AdaptSegNet single-level LS-GAN"),
    "i": ("bn_only", "control: AdaptSegNet with adversarial weights 0 (target BN stats only)"),
}
NAMES = {name: letter for letter, (name, _) in PRESETS.items()}
NUM_STEPS = 500          # CPU profile of benchmarks/quality/methods.py
SEMI_START_FRACTION = 0.25  # 5000 of 20000 in the original [§6.1]


def letter_of(name: str) -> str:
  key = name.strip()
  if key in PRESETS:
    return key
  if key in NAMES:
    return NAMES[key]
  known = [f"{k} ({n})" for k, (n, _) in PRESETS.items()]
  raise presets.unknown_preset("configs/shapes_methods.py", name, known)


def get_config(arg=None):
  name, options = presets.parse_arg(arg, "d")
  key = letter_of(name)
  adapt = key in "efghi"
  c = defaults.base_config()
  c.seed = 0
  c.num_steps = NUM_STEPS
  c.num_steps_stop = None
  c.batch_size = 4
  c.iter_size = 1
  c.labelled_fraction = 0.125 if key in "bcd" else 1.0   # [§6.1] README --partial-data 0.125
  c.log_every = 25
  c.eval_every = 50
  c.checkpoint_every = NUM_STEPS        # one checkpoint at the end (resume granularity)
  c.keep_checkpoints = 1
  c.eval_max_examples = 48              # fixed subset: the first 48 validation images
  c.parallel.mode = "jit"               # one device; its step is kept by the persistent cache

  c.model.arch = "deeplabv2_multi" if adapt else "deeplabv2"
  c.model.num_classes = 5               # background, disc, square, triangle, ring
  c.model.depths = "tiny"
  c.model.width = 16
  c.model.bn_mode = "batch_stats"       # [§1.1] the originals' model.train()
  c.disc.arch = "fc"
  c.disc.ndf = 16
  c.optim_g.lr = 5e-3                   # 20x [§6.1]: no pretrained initialisation here
  c.optim_g.legacy_duplicate_updates = False  # [§1.5] the correction (each parameter once)
  c.optim_d.lr = 1e-4                   # [§6.1], [§7.1]

  m = c.method
  m.gan = "vanilla"
  m.lambda_semi = 0.0
  m.lambda_semi_adv = 0.0
  m.mask_T = 0.2                        # [§6.1]
  m.semi_start = int(round(SEMI_START_FRACTION * NUM_STEPS))
  m.semi_start_adv = 0                  # [§6.1]
  m.d_remain = True                     # [§6.1]
  if key in "ab":
    m.name = "supervised"
  elif key in "cd":
    m.name = "advsemi"
    m.lambda_adv = 0.01                 # [§6.1] README --lambda-adv-pred 0.01
    if key == "d":
      m.lambda_semi = 0.1               # [§6.1]
      m.lambda_semi_adv = 0.001         # [§6.1]
  elif key == "e":
    m.name = "supervised"
    m.lambda_seg = 0.0                  # the single-level network, main head only
  else:
    m.name = "adaptseg"
    lambda_seg, lambda_aux, lambda_main, gan = {
        "f": (0.0, 0.0, 0.001, "vanilla"),   # [§7.1] README single-level
        "g": (0.1, 0.0002, 0.001, "vanilla"),  # [§7.1] README multi-level
        "h": (0.0, 0.0, 0.01, "ls"),         # [§7.1] README LS-GAN
        "i": (0.0, 0.0, 0.0, "vanilla"),     # control: no adversarial gradient reaches G
    }[key]
    m.lambda_seg, m.lambda_adv_aux, m.lambda_adv, m.gan = lambda_seg, lambda_aux, lambda_main, gan

  c.data = defaults.stream_config(
      "shapes", config_name="source", split="train", crop_size=(64, 64), channel_order="RGB",
      random_mirror=True, gt_loader="plain", read_threads=2)
  c.target_data = defaults.stream_config(
      "shapes", config_name="target", split="train", crop_size=(64, 64), channel_order="RGB",
      random_mirror=True, use_labels=False, read_threads=2)
  c.eval_data = defaults.stream_config(
      "shapes", config_name="target" if adapt else "source", split="validation",
      crop_size=None, channel_order="RGB", eval_mode="none", read_threads=2)
  c.eval_mean_mode = "nanmean"
  return presets.apply_options(c, options)
