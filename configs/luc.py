"""Luc et al. 2016, "Semantic Segmentation using Adversarial Networks", on PASCAL VOC.

No working original code exists (nexus-kgp/adsemseg is unfinished and label-map only,
docs/FIDELITY.md §4.3): this preset pairs the paper's image + label-map discriminator
(`disc.arch='image_label'`, LargeFOV stack, one logit per image) and its label encodings
with the AdvSemiSeg VOC setup (§6) for everything the paper's code would have fixed.

ARG = ENCODING[,runlocal]: basic (default) | product | scaling (the paper's three D inputs).
lambda_adv: UNVERIFIED (the paper's value was not retrieved, §9.3; nexus-kgp used 0.65 with a
summed BCE); 0.1 here, tune it with --config.method.lambda_adv.

Section marks such as [§7.1] name sections of docs/FIDELITY.md.
"""

from advseg_jax.config import defaults, presets

ENCODINGS = ("basic", "product", "scaling")


def get_config(arg=None):
  name, options = presets.parse_arg(arg, "basic")
  if name not in ENCODINGS:
    raise presets.unknown_preset("configs/luc.py", name, ENCODINGS)
  c = defaults.base_config()
  c.seed = 1234
  c.num_steps = 20000                 # [§6.1] AdvSemiSeg schedule
  c.batch_size = 10                   # [§6.1]
  c.iter_size = 1
  c.labelled_fraction = 1.0           # Luc et al. train on all labelled VOC images
  c.checkpoint_every = 5000           # [§6.1]
  c.eval_every = 5000
  c.log_every = 10

  c.method.name = "luc"
  c.method.gan = "vanilla"            # BCE on D's image-level logit (paper: sigmoid + BCE)
  c.method.label_encoding = name      # basic | product | scaling (Luc et al. §3)
  c.method.lambda_adv = 0.1           # UNVERIFIED, see the docstring
  c.method.lambda_semi = 0.0
  c.method.lambda_semi_adv = 0.0

  c.model.arch = "deeplabv2"          # [§1] the segmentor (the paper used Dilated-8)
  c.model.num_classes = 21
  c.model.aspp_branches_used = 2      # [§1.2]
  c.disc.arch = "image_label"         # [§4.3] image branch + label branch + LargeFOV stack

  c.optim_g.lr = 2.5e-4               # [§6.1]
  c.optim_d.name = "adam"             # [§4.1]
  c.optim_d.lr = 1e-4

  c.data = defaults.stream_config(
      "voc_aug", split="train", crop_size=(321, 321), channel_order="RGB")  # [§6.1, §6.5]
  c.eval_data = defaults.stream_config(
      "voc_aug", split="validation", crop_size=None, channel_order="RGB",
      eval_mode="pad", eval_pad_size=(505, 505))  # [§6.6]
  c.eval_mean_mode = "voc"            # [§6.6]
  c.init.rule = "advsemi"             # [§3.3]
  return presets.apply_options(c, options)
