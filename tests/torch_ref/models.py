"""PyTorch reference of the originals' modules, losses and optimiser quirks (NCHW).

Written from the facts in docs/FIDELITY.md (§1-5); used by the parity tests, the training-step
parity tests and the PyTorch benchmark. Everything here is plain PyTorch on NCHW tensors:

* `Res_Deeplab(num_classes, aspp_branches=2, layers=(3, 4, 23, 3))` -- DeepLab-v2 ResNet
  (AdvSemiSeg / AdaptSegNet `model/deeplab.py`): MSRA bottleneck (stride in the 1x1 conv1;
  `stride_in_1x1=False` gives torchvision's layout), ceil-mode max-pool, layer3/layer4 dilated
  2/4, a downsample branch in block 0 of every layer, frozen BN affine, ASPP `layer5`.
  Input [N, 3, H, W] -> logits [N, C, h, w] with h = output_size(H) (stride 8).
* `DeeplabMulti(num_classes, ...)` -- AdaptSegNet: `layer5` (aux) on the 1024-ch layer3 output
  and `layer6` (main) on the 2048-ch layer4 output; returns `(aux, main)`.
* `ClassifierModule` -- ASPP: four 3x3 dilated convs (6, 12, 18, 24) whose outputs are summed;
  `branches_used=2` is the released code (early `return` inside the loop), 4 the fixed sum.
* `FCDiscriminator(num_classes, ndf=64)` -- five 4x4/s2/p1 convs, LeakyReLU(0.2), raw logits.
* `Dis(in_channels, ndf=64)` -- the ICLR-2018 reproduction's discriminator: five 4x4/s2/p2
  convs (`conv1..conv5`, 2 outputs) and, inside the module, five times (bilinear x2 with
  align_corners=True, drop the last row and column).
* `optim_parameters(model, lr)` -- the originals' SGD parameter groups *with* their duplicate
  listings (1x stem conv, 3x bottleneck convs, 4x downsample convs; docs/FIDELITY.md §1.5) and
  `LegacySGD`, the PyTorch 0.2-0.4 SGD step those duplicates were applied with.
* `CrossEntropy2d`, `BCEWithLogitsLoss2d` -- the originals' losses (ignore label 255).
* `randomize_(model, seed)` -- random weights AND random BN affine / running statistics, so a
  parity test exercises every tensor that a checkpoint carries.

`layers=` (and `width=`) make small variants, e.g. `Res_Deeplab(21, layers=(1, 1, 2, 1))`;
their state_dict keys follow the same scheme.
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Bottleneck", "ClassifierModule", "ResNet", "Res_Deeplab", "DeeplabMulti",
    "FCDiscriminator", "Dis", "optim_parameters", "param_multiplicity", "LegacySGD",
    "CrossEntropy2d", "BCEWithLogitsLoss2d", "randomize_", "torchvision_state_dict",
    "count_parameters", "state_dict_without_counters", "output_size", "rel_err", "fresh_rng",
    "nchw_to_nhwc", "nhwc_to_nchw",
]

RESNET101 = (3, 4, 23, 3)
ASPP_DILATIONS = (6, 12, 18, 24)
BN_MOMENTUM = 0.1  # PyTorch default, used by the originals.


def _frozen_bn(channels: int) -> nn.BatchNorm2d:
  """`nn.BatchNorm2d(c, affine=True)` with weight/bias `requires_grad=False` (the originals).

  The running statistics are NOT frozen: in `.train()` the layer normalises with batch
  statistics and updates running_mean/var (momentum 0.1, unbiased variance).
  """
  bn = nn.BatchNorm2d(channels, affine=True, momentum=BN_MOMENTUM)
  for p in bn.parameters():
    p.requires_grad = False
  return bn


def output_size(n: int) -> int:
  """Stride-8 logits size for input side `n` (conv1 s2, ceil-mode pool s2, layer2 s2)."""
  a = (n - 1) // 2 + 1
  b = math.ceil((a - 1) / 2) + 1
  return (b - 1) // 2 + 1


# --------------------------------------------------------------------------- backbone
class Bottleneck(nn.Module):
  """Bottleneck (expansion 4): conv1 1x1 -> bn1 -> relu -> conv2 3x3 (dilated) -> bn2 -> relu
  -> conv3 1x1 -> bn3, plus the residual (`downsample(x)` when given), then relu.

  `stride_in_1x1=True` is the MSRA/Caffe layout of the originals (block stride in the 1x1
  conv1); False puts it in the 3x3 conv2 like torchvision. NCHW in and out.
  """
  expansion = 4

  def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
               downsample: Optional[nn.Module] = None, stride_in_1x1: bool = True):
    super().__init__()
    s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
    # Registration order = state_dict order of the originals.
    self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, stride=s1, bias=False)
    self.bn1 = _frozen_bn(planes)
    self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=s3, padding=dilation,
                           dilation=dilation, bias=False)
    self.bn2 = _frozen_bn(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
    self.bn3 = _frozen_bn(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample
    self.stride = stride

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    residual = x
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    if self.downsample is not None:
      residual = self.downsample(x)
    out = out + residual
    return self.relu(out)


class ClassifierModule(nn.Module):
  """DeepLab-v2 ASPP `Classifier_Module`: `conv2d_list` = 4 x Conv2d(inplanes -> C, 3x3, bias)
  with dilation = padding in `dilations`; weights N(0, 0.01), biases PyTorch default.

  The outputs of the first `branches_used` convs are summed. The originals return inside the
  summing loop, so their output is branch0 + branch1 only (`branches_used=2`); 4 is the fixed
  version. The unused convs stay in the state_dict and receive no gradient.
  [N, inplanes, h, w] -> [N, C, h, w].
  """

  def __init__(self, inplanes: int, dilations: Sequence[int], paddings: Sequence[int],
               num_classes: int, branches_used: int = 2):
    super().__init__()
    if not 1 <= branches_used <= len(dilations):
      raise ValueError(f"branches_used must be in 1..{len(dilations)}, got {branches_used}")
    self.branches_used = branches_used
    self.conv2d_list = nn.ModuleList()
    for dilation, padding in zip(dilations, paddings):
      self.conv2d_list.append(nn.Conv2d(inplanes, num_classes, kernel_size=3, stride=1,
                                        padding=padding, dilation=dilation, bias=True))
    for m in self.conv2d_list:
      m.weight.data.normal_(0, 0.01)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = self.conv2d_list[0](x)
    for conv in self.conv2d_list[1:self.branches_used]:
      out = out + conv(x)
    return out


class ResNet(nn.Module):
  """DeepLab-v2 dilated ResNet trunk shared by `Res_Deeplab` and `DeeplabMulti`.

  conv1 7x7/s2/p3 -> bn1 -> relu -> maxpool 3/s2/p1 ceil_mode -> layer1 (s1) -> layer2 (s2)
  -> layer3 (dilation 2) -> layer4 (dilation 4). Output stride 8. `width` is the stem width
  and layer1's planes (64 in the originals).
  """

  def __init__(self, layers: Sequence[int] = RESNET101, stride_in_1x1: bool = True,
               width: int = 64):
    super().__init__()
    if len(layers) != 4:
      raise ValueError(f"layers must have 4 entries, got {tuple(layers)}")
    self.stride_in_1x1 = stride_in_1x1
    self.inplanes = width
    self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = _frozen_bn(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    self.layer1 = self._make_layer(width, layers[0])
    self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
    self.layer3 = self._make_layer(width * 4, layers[2], stride=1, dilation=2)
    self.layer4 = self._make_layer(width * 8, layers[3], stride=1, dilation=4)

  def _make_layer(self, planes: int, blocks: int, stride: int = 1,
                  dilation: int = 1) -> nn.Sequential:
    downsample = None
    if (stride != 1 or self.inplanes != planes * Bottleneck.expansion
        or dilation == 2 or dilation == 4):
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, kernel_size=1,
                    stride=stride, bias=False),
          _frozen_bn(planes * Bottleneck.expansion))
    blocks_ = [Bottleneck(self.inplanes, planes, stride, dilation=dilation,
                          downsample=downsample, stride_in_1x1=self.stride_in_1x1)]
    self.inplanes = planes * Bottleneck.expansion
    for _ in range(1, blocks):
      blocks_.append(Bottleneck(self.inplanes, planes, dilation=dilation,
                                stride_in_1x1=self.stride_in_1x1))
    return nn.Sequential(*blocks_)

  def _init_like_originals(self) -> None:
    """Every conv weight ~ N(0, 0.01), BN weight 1 / bias 0 (`ResNet.__init__`)."""
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        m.weight.data.normal_(0, 0.01)
      elif isinstance(m, nn.BatchNorm2d):
        m.weight.data.fill_(1)
        m.bias.data.zero_()

  def stem_to_layer3(self, x: torch.Tensor) -> torch.Tensor:
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    return self.layer3(self.layer2(self.layer1(x)))

  def backbone_modules(self) -> List[nn.Module]:
    return [self.conv1, self.bn1, self.layer1, self.layer2, self.layer3, self.layer4]

  def classifier_modules(self) -> List[nn.Module]:
    raise NotImplementedError

  def get_1x_lr_params_NOscale(self) -> Iterator[nn.Parameter]:
    """Backbone params as the originals list them: once per ancestor module (duplicates)."""
    for top in self.backbone_modules():
      for module in top.modules():  # includes `top` itself, recursively
        for p in module.parameters():  # recursive again
          if p.requires_grad:
            yield p

  def get_10x_lr_params(self) -> Iterator[nn.Parameter]:
    for module in self.classifier_modules():
      for p in module.parameters():
        if p.requires_grad:
          yield p

  def optim_parameters(self, lr: float) -> List[Dict]:
    return [{"params": list(self.get_1x_lr_params_NOscale()), "lr": lr},
            {"params": list(self.get_10x_lr_params()), "lr": 10 * lr}]


class Res_Deeplab(ResNet):  # noqa: N801 -- the originals' name
  """`Res_Deeplab(num_classes)` of AdvSemiSeg / AdaptSegNet: trunk + ASPP `layer5` on layer4.

  [N, 3, H, W] (mean-subtracted, 0-255 scale) -> [N, num_classes, h, w], h = output_size(H).
  """

  def __init__(self, num_classes: int = 21, aspp_branches: int = 2,
               layers: Sequence[int] = RESNET101, stride_in_1x1: bool = True, width: int = 64):
    super().__init__(layers, stride_in_1x1, width)
    self.layer5 = ClassifierModule(width * 32, ASPP_DILATIONS, ASPP_DILATIONS, num_classes,
                                   aspp_branches)
    self._init_like_originals()

  def classifier_modules(self) -> List[nn.Module]:
    return [self.layer5]

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.layer5(self.layer4(self.stem_to_layer3(x)))


class DeeplabMulti(ResNet):
  """AdaptSegNet `DeeplabMulti`: `layer5` (aux) on layer3 (1024 ch), `layer6` (main) on
  layer4 (2048 ch). [N, 3, H, W] -> (aux [N, C, h, w], main [N, C, h, w]), both stride 8.
  """

  def __init__(self, num_classes: int = 19, aspp_branches: int = 2,
               layers: Sequence[int] = RESNET101, stride_in_1x1: bool = True, width: int = 64):
    super().__init__(layers, stride_in_1x1, width)
    self.layer5 = ClassifierModule(width * 16, ASPP_DILATIONS, ASPP_DILATIONS, num_classes,
                                   aspp_branches)
    self.layer6 = ClassifierModule(width * 32, ASPP_DILATIONS, ASPP_DILATIONS, num_classes,
                                   aspp_branches)
    self._init_like_originals()

  def classifier_modules(self) -> List[nn.Module]:
    return [self.layer5, self.layer6]

  def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    x3 = self.stem_to_layer3(x)
    aux = self.layer5(x3)
    main = self.layer6(self.layer4(x3))
    return aux, main


def optim_parameters(model: ResNet, lr: float) -> List[Dict]:
  """The originals' `model.optim_parameters(args)`: [{backbone, lr}, {classifier(s), 10 lr}].

  Group 0 lists each backbone parameter once per ancestor module inside its top-level module:
  stem conv1 1x, bottleneck convs 3x, downsample convs 4x (BN affine is frozen and skipped).
  PyTorch applies the SGD update once per listing; see `LegacySGD`.
  """
  return model.optim_parameters(lr)


def param_multiplicity(groups: List[Dict], model: nn.Module) -> Dict[str, int]:
  """{state_dict name: number of times it is listed in `groups`} (0 for unlisted params)."""
  counts = {id(p): 0 for p in model.parameters()}
  for g in groups:
    for p in g["params"]:
      counts[id(p)] += 1
  return {name: counts[id(p)] for name, p in model.named_parameters()}


class LegacySGD(torch.optim.Optimizer):
  """SGD step of PyTorch 0.2-0.4, which the originals ran (docs/FIDELITY.md §1.5).

  For every *listing* of a parameter in a group (duplicates included), in order:
  `d_p = p.grad; d_p += wd * p` (in place, so a later listing sees the accumulated decay);
  momentum buffer `buf = m * buf + d_p` (first-ever use: `buf = d_p`); `p -= lr * buf`.
  Modern `torch.optim.SGD` does not modify the gradient in place, so it differs when a
  parameter is listed more than once.
  """

  def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
    with warnings.catch_warnings():  # the duplicates are the point here
      warnings.filterwarnings("ignore", message=".*duplicate parameters.*")
      super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

  @torch.no_grad()
  def step(self, closure=None):  # noqa: D102
    for group in self.param_groups:
      wd, m, lr = group["weight_decay"], group["momentum"], group["lr"]
      for p in group["params"]:
        if p.grad is None:
          continue
        d_p = p.grad
        if wd != 0:
          d_p.add_(p, alpha=wd)
        if m != 0:
          state = self.state[p]
          if "momentum_buffer" not in state:
            buf = state["momentum_buffer"] = torch.zeros_like(p)
            buf.mul_(m).add_(d_p)
          else:
            buf = state["momentum_buffer"]
            buf.mul_(m).add_(d_p)
          d_p = buf
        p.add_(d_p, alpha=-lr)
    return None


# --------------------------------------------------------------------------- discriminators
class FCDiscriminator(nn.Module):
  """AdvSemiSeg / AdaptSegNet discriminator: conv1..conv4 (ndf, 2, 4, 8 ndf) and `classifier`
  (-> 1), all 4x4/s2/p1 with bias, LeakyReLU(0.2) in between, raw logits, PyTorch default init.
  [N, C, H, W] probabilities -> [N, 1, floor(H/32), floor(W/32)].
  """

  def __init__(self, num_classes: int, ndf: int = 64):
    super().__init__()
    self.conv1 = nn.Conv2d(num_classes, ndf, kernel_size=4, stride=2, padding=1)
    self.conv2 = nn.Conv2d(ndf, ndf * 2, kernel_size=4, stride=2, padding=1)
    self.conv3 = nn.Conv2d(ndf * 2, ndf * 4, kernel_size=4, stride=2, padding=1)
    self.conv4 = nn.Conv2d(ndf * 4, ndf * 8, kernel_size=4, stride=2, padding=1)
    self.classifier = nn.Conv2d(ndf * 8, 1, kernel_size=4, stride=2, padding=1)
    self.leaky_relu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.leaky_relu(self.conv1(x))
    x = self.leaky_relu(self.conv2(x))
    x = self.leaky_relu(self.conv3(x))
    x = self.leaky_relu(self.conv4(x))
    return self.classifier(x)


class Dis(nn.Module):
  """ICLR-2018 reproduction discriminator (mohitzsh `discriminators/discriminator.py`).

  conv1..conv5, 4x4/s2/p2 with bias (ndf, 2, 4, 8 ndf, then 2 outputs), LeakyReLU(0.2) after
  the first four; then 5 x (bilinear x2 with align_corners=True, i.e. `F.upsample_bilinear`,
  and drop the last row/column). For H = 32k + 1 the output is H x W again (321 -> 11 -> 321).
  [N, C, H, W] -> [N, 2, H', W'] 2-class logits.
  """

  def __init__(self, in_channels: int, ndf: int = 64, negative_slope: float = 0.2):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, ndf, kernel_size=4, stride=2, padding=2)
    self.conv2 = nn.Conv2d(ndf, ndf * 2, kernel_size=4, stride=2, padding=2)
    self.conv3 = nn.Conv2d(ndf * 2, ndf * 4, kernel_size=4, stride=2, padding=2)
    self.conv4 = nn.Conv2d(ndf * 4, ndf * 8, kernel_size=4, stride=2, padding=2)
    self.conv5 = nn.Conv2d(ndf * 8, 2, kernel_size=4, stride=2, padding=2)
    self.negative_slope = negative_slope

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
      x = F.leaky_relu(conv(x), self.negative_slope)
    x = self.conv5(x)
    for _ in range(5):
      x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
      x = x[:, :, :-1, :-1]
    return x


# --------------------------------------------------------------------------- losses
class CrossEntropy2d(nn.Module):
  """Mean cross-entropy over pixels whose target is >= 0 and != ignore_label.

  predict [N, C, H, W] logits, target [N, H, W] integer labels. Returns a zero tensor when no
  pixel is valid (the originals return a CPU zero then).
  """

  def __init__(self, size_average: bool = True, ignore_label: int = 255):
    super().__init__()
    self.size_average = size_average
    self.ignore_label = ignore_label

  def forward(self, predict: torch.Tensor, target: torch.Tensor,
              weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    if predict.dim() != 4 or target.dim() != 3 or predict.shape[0] != target.shape[0] \
        or predict.shape[2:] != target.shape[1:]:
      raise ValueError(f"predict {tuple(predict.shape)} / target {tuple(target.shape)} mismatch")
    valid = (target >= 0) & (target != self.ignore_label)
    if not bool(valid.any()):
      return predict.new_zeros(())
    logits = predict.permute(0, 2, 3, 1)[valid]  # [P, C]
    return F.cross_entropy(logits, target[valid].long(), weight=weight,
                           reduction="mean" if self.size_average else "sum")


class BCEWithLogitsLoss2d(nn.Module):
  """Mean BCE-with-logits over positions whose target is >= 0 and != ignore_label.

  predict [N, 1, H, W] logits; target [N, 1, H, W] floats in {0, 1, ignore_label}.
  """

  def __init__(self, size_average: bool = True, ignore_label: int = 255):
    super().__init__()
    self.size_average = size_average
    self.ignore_label = ignore_label

  def forward(self, predict: torch.Tensor, target: torch.Tensor,
              weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    if predict.shape != target.shape:
      raise ValueError(f"predict {tuple(predict.shape)} / target {tuple(target.shape)} mismatch")
    valid = (target >= 0) & (target != self.ignore_label)
    if not bool(valid.any()):
      return predict.new_zeros(())
    return F.binary_cross_entropy_with_logits(
        predict[valid], target[valid].to(predict.dtype), weight=weight,
        reduction="mean" if self.size_average else "sum")


# --------------------------------------------------------------------------- helpers
@torch.no_grad()
def randomize_(model: nn.Module, seed: Optional[int] = None, *, bn_stats: bool = True,
               conv_gain: float = 1.0) -> nn.Module:
  """Random weights, BN affine and BN running statistics, in place; returns `model`.

  Convs: weight ~ N(0, conv_gain^2 / fan_in), bias ~ U(-0.1, 0.1). BatchNorm: weight ~
  U(0.5, 1.5) (bn3 / downsample BNs: U(0.2, 0.5), which keeps the residual stream of a
  101-layer net well scaled), bias ~ N(0, 0.1); with `bn_stats` also running_mean ~ N(0, 0.2)
  and running_var ~ U(0.5, 2.0) (positive). Every tensor a checkpoint carries is then
  non-trivial, so eval-mode parity tests really test the statistics. `seed=None` draws one;
  the seed used is stored in `model.randomize_seed` (print it when a test fails).
  """
  if seed is None:
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
  gen = torch.Generator().manual_seed(seed)

  def normal(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
    t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype) * std + mean)

  def uniform(t: torch.Tensor, lo: float, hi: float) -> None:
    t.copy_(torch.rand(t.shape, generator=gen, dtype=t.dtype) * (hi - lo) + lo)

  for name, m in model.named_modules():
    if isinstance(m, nn.Conv2d):
      fan_in = m.weight[0].numel()
      normal(m.weight, conv_gain / math.sqrt(fan_in))
      if m.bias is not None:
        uniform(m.bias, -0.1, 0.1)
    elif isinstance(m, nn.BatchNorm2d):
      residual_end = name.endswith("bn3") or name.endswith("downsample.1")
      uniform(m.weight, *((0.2, 0.5) if residual_end else (0.5, 1.5)))
      normal(m.bias, 0.1)
      if bn_stats:
        normal(m.running_mean, 0.2)
        uniform(m.running_var, 0.5, 2.0)
  model.randomize_seed = seed
  return model


def state_dict_without_counters(model: nn.Module) -> "Dict[str, torch.Tensor]":
  """`model.state_dict()` minus BN `num_batches_tracked` (the originals' 528-key format)."""
  return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def count_parameters(model: nn.Module) -> int:
  """All parameters (frozen BN affine included), as docs/FIDELITY.md §1.6 counts them."""
  return sum(p.numel() for p in model.parameters())


def torchvision_state_dict(model: ResNet, num_fc_classes: int = 1000,
                           seed: Optional[int] = None) -> "Dict[str, torch.Tensor]":
  """A torchvision-ImageNet-shaped state_dict from a `stride_in_1x1=False` model.

  Backbone keys (conv1, bn1, layer1..4, incl. num_batches_tracked) are the model's own; the
  DeepLab classifier(s) are dropped and a random `fc.weight` [num_fc_classes, 2048] and
  `fc.bias` are added, as in torchvision's `resnet101-*.pth`.
  """
  gen = torch.Generator().manual_seed(seed if seed is not None else 0)
  out = {k: v.clone() for k, v in model.state_dict().items()
         if not k.startswith(("layer5.", "layer6."))}
  channels = model.layer4[0].conv3.out_channels
  out["fc.weight"] = torch.randn(num_fc_classes, channels, generator=gen) * 0.01
  out["fc.bias"] = torch.zeros(num_fc_classes)
  return out


# --------------------------------------------------------------------------- test helpers
def rel_err(a, b) -> float:
  """max|a - b| / max|b| over all elements (b is the reference)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  a = np.asarray(a, dtype=np.float64)
  b = np.asarray(b, dtype=np.float64)
  if a.shape != b.shape:
    raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
  scale = np.abs(b).max()
  return float(np.abs(a - b).max() / (scale if scale > 0 else 1.0))


def fresh_rng():
  """(numpy Generator, seed): an unseeded draw, printed on failure (tests.seeds);
  ADVSEG_TEST_SEED=<int> reproduces a reported one."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from tests import seeds  # pylint: disable=import-outside-toplevel
  seed = seeds.draw()
  return np.random.default_rng(seed), seed


def nchw_to_nhwc(x):
  return x.transpose(0, 2, 3, 1)


def nhwc_to_nchw(x):
  return x.transpose(0, 3, 1, 2)
