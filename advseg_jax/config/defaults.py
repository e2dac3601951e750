"""Config schema, defaults and validation (ml_collections).

`base_config()` holds every field with the originals' default; `§x.y` in a comment names the
section of docs/FIDELITY.md the default comes from. Files in `configs/` start from it and set
a preset:

    python -m advseg_jax train --config configs/voc.py:adv_semi_0.125 --workdir runs/voc
        --config.num_steps=1000 --config.method.lambda_adv=0.01

`validate(config)` checks types and ranges of every field at start-up and names the field.
"""

from __future__ import annotations

from typing import Any, Tuple

import ml_collections

from advseg_jax.data import config as data_config
from advseg_jax.normalization import CAFFE_MEAN_BGR

# AdvSemiSeg's IMG_MEAN (B, G, R, 0-255 scale): docs/FIDELITY.md §6.5.
MEAN_BGR = CAFFE_MEAN_BGR


def stream_config(name: str = "shapes", split: str = "train",
                  **overrides: Any) -> ml_collections.ConfigDict:
  """One data stream: `advseg_jax.data.dataset_config` fields plus the `split` to read.

  Defaults here are AdvSemiSeg's VOC training stream (docs/FIDELITY.md §6.1, §6.5): crop
  321x321, RGB input, no random scale or mirror (the README command enables neither).
  """
  defaults = dict(name=name, crop_size=(321, 321), channel_order="RGB", mean_bgr=MEAN_BGR)
  defaults.update(overrides)
  c = data_config.dataset_config(**defaults)
  c.split = split
  return c


def _method_config() -> ml_collections.ConfigDict:
  """`config.method`: the training method and its loss weights (docs/FIDELITY.md §6.1, §7.1)."""
  m = ml_collections.ConfigDict()
  m.name = "advsemi"
  m.gan = "vanilla"           # 'vanilla' BCE | 'ls' LS-GAN (§7.1) | 'softmax2' ICLR D (§4.2)
  # advsemi: the README's --lambda-adv-pred (§6.1); adaptseg: lambda_adv_target2 (§7.1)
  m.lambda_adv = 0.01
  m.lambda_semi = 0.1         # §6.1
  m.lambda_semi_adv = 0.001   # §6.1
  m.mask_T = 0.2              # §6.1
  m.semi_start = 5000         # §6.1
  m.semi_start_adv = 0        # §6.1
  m.d_remain = True           # §6.1
  m.real_label_smoothing = 0.0  # the ICLR reproduction uses 0.1 (§4.2)
  # Stabilisers that are not in the originals (off by default; the D-wins warning names them):
  m.d_instance_noise = 0.0    # std of N(0, s^2) added to D's map inputs, -> 0 linearly
  m.d_update_every = 1        # apply D's update every N-th step (1 = every step)
  m.lambda_seg = 0.1          # §7.1 aux CE weight (multi-level)
  m.lambda_adv_aux = 0.0002   # §7.1 lambda_adv_target1
  # advsemi / adaptseg: 'separate' train-mode G passes per stream (the originals) or one
  # 'joint' pass on both streams, so BN's batch statistics mix them (advseg_jax.methods).
  m.bn_domains = "separate"
  m.label_encoding = "basic"  # luc: 'basic' | 'product' | 'scaling'
  # iclr2018 (§8): each step is labelled with this probability, else unlabelled (0.5 in its
  # semi mode, `random.random() < 0.5`), drawn from alternation_seed and the step number.
  m.labelled_probability = 1.0
  m.alternation_seed = 0      # §8 random.seed(0)
  return m


def _model_config() -> ml_collections.ConfigDict:
  """`config.model`: the generator (Res_Deeplab / DeeplabMulti, docs/FIDELITY.md §1-§2)."""
  g = ml_collections.ConfigDict()
  g.arch = "deeplabv2"
  g.num_classes = 21
  g.depths = "resnet101"
  g.width = 64
  g.stride_in_1x1 = True
  g.aspp_branches_used = 2    # §1.2 the released models' buggy ASPP
  g.bn_mode = "batch_stats"   # §1.1 model.train() with frozen affine
  g.sync_bn = False
  g.dtype = "float32"
  # How the backbone's 1x1 convolutions are computed: 'dot' (a matrix product, no XLA:CPU
  # layout transposes; same variables and numbers up to float rounding) or 'conv'.
  g.pointwise_impl = "dot"
  # Input gradient of the bottlenecks' stride-1 3x3 convolutions: 'matmul' (a matrix product
  # + col2im), 'xla' (XLA's convolution backward) or 'auto' (matmul on CPU, xla elsewhere).
  g.conv_dx_impl = "auto"
  # The ASPP head's dilated 3x3 convolutions: 'matmul' (one matrix product + shifted adds),
  # 'conv' (one convolution per branch) or 'auto' (matmul on CPU, conv elsewhere).
  g.aspp_impl = "auto"
  return g


def _optimiser_configs() -> Tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
  """`config.optim_g`, `config.optim_d` (docs/FIDELITY.md §1.5, §4.1, §6.1)."""
  g = ml_collections.ConfigDict()
  g.lr = 2.5e-4               # §6.1
  g.momentum = 0.9
  g.weight_decay = 5e-4
  g.power = 0.9
  # §1.5 True (faithful): one SGD update per listing of the originals' parameter listing
  # (bottleneck convs 3x, downsample convs 4x); False (correction): each parameter once.
  g.legacy_duplicate_updates = True
  g.duplicate_rule = "torch0.4"  # §1.5 per-listing step of PyTorch 0.2-0.4 | 'torch2'
  d = ml_collections.ConfigDict()
  d.name = "adam"             # §4.1 Adam(1e-4, (0.9, 0.99))
  d.lr = 1e-4
  d.b1 = 0.9
  d.b2 = 0.99
  d.momentum = 0.5            # sgd only (the ICLR reproduction, §4.2)
  d.nesterov = False
  d.weight_decay = 0.0
  d.power = 0.9
  return g, d


def _diagnostics_config() -> ml_collections.ConfigDict:
  """`config.diagnostics`: non-finite handling and the D-wins / D-collapse warnings."""
  d = ml_collections.ConfigDict()
  d.grad_norms = False        # log g/grad_norm_seg, g/grad_norm_adv (one extra backward pull)
  d.skip_nonfinite = False    # False: stop the run naming the term
  d.d_wins_threshold = 0.2    # D loss below this (the band's low edge, §10.7) ...
  d.d_wins_patience = 50      # ... for this many logged steps -> warning
  d.d_collapse_accuracy = 0.55
  return d


def base_config() -> ml_collections.ConfigDict:
  """Every field with its default (AdvSemiSeg's VOC settings; see the module docstring)."""
  c = ml_collections.ConfigDict()
  c.seed = 1234               # §6.1 --random-seed (unused by the originals; used here)
  c.num_steps = 20000         # §6.1 poly-schedule length
  c.num_steps_stop = ml_collections.config_dict.placeholder(int)  # §7.1 early stop (150000)
  c.batch_size = 10           # §6.1 global batch per stream
  c.iter_size = 1             # §6.1 gradient accumulation
  c.method = _method_config()
  c.model = _model_config()

  c.disc = ml_collections.ConfigDict()
  c.disc.arch = "fc"          # §4.1
  c.disc.ndf = 64
  c.disc.num_downsamples = 5  # 'fc' only: stride-2 convs of the five (§4.1: all five)
  c.disc.dtype = "float32"
  c.optim_g, c.optim_d = _optimiser_configs()

  c.data = stream_config("voc_aug")            # labelled / source stream
  c.target_data = stream_config("cityscapes")  # adaptseg target stream
  c.eval_data = stream_config("voc_aug", split="validation", crop_size=None, eval_mode="pad")
  c.labelled_fraction = 0.5   # §6.1 --partial-data default
  c.split_file = ml_collections.config_dict.placeholder(str)  # our JSON or train_id.pkl
  # How a new split is drawn (advseg_jax.data.splits): 'advsemi' (§6.2, a permutation seeded
  # by `seed`) or 'iclr2018' (§8, np.random.seed(100) + np.random.choice, whatever `seed`).
  c.split_rule = "advsemi"

  c.init = ml_collections.ConfigDict()
  c.init.checkpoint = ml_collections.config_dict.placeholder(str)  # .pth or converted model dir
  c.init.rule = "advsemi"     # converter loading rule (§3.3)
  c.init.d_checkpoint = ml_collections.config_dict.placeholder(str)

  c.parallel = ml_collections.ConfigDict()
  c.parallel.mode = "pmap"

  c.log_every = 10
  c.eval_every = 1000
  c.eval_max_examples = 0     # 0 = the whole split
  c.eval_mean_mode = "auto"   # 'voc' (§6.6) | 'nanmean' (§7.4) | 'all'; auto: by eval_mode
  c.checkpoint_every = 5000   # §6.1 --save-pred-every
  c.keep_checkpoints = 3
  c.diagnostics = _diagnostics_config()
  return c
