"""PyTorch reference *training iterations* of AdvSemiSeg and AdaptSegNet (NCHW, CPU).

Written from docs/FIDELITY.md §6.3 (AdvSemiSeg `train.py`) and §7.2 (AdaptSegNet
`train_gta2cityscapes_multi.py`), on top of the module re-implementations in
`torch_reference.py`. One call = one outer iteration `i_iter` of the original loop:

    zero grads; poly learning rates for G (two groups, 10x head) and D(s)
    for sub_i in range(iter_size): G step (D frozen, grads flow through D), then D step
    optimizer_G.step(); optimizer_D.step()

Batches use the engine's layout (`advseg_jax.train.steps`): a dict of streams of NHWC numpy
arrays, `{'labelled': {'image', 'label'}, 'unlabelled': {'image'}, 'gt': {'label'}}` for
advsemi and `{'source': {'image', 'label'}, 'target': {'image'}}` for adaptseg; with
`iter_size > 1` sub-iteration `k` takes the k-th equal chunk of every stream, as the engine does.
The returned loss dicts use the engine's metric names (`g/...`, `d/...`, `semi/...`), averaged
over sub-iterations.

Also here: the Flax <-> PyTorch name mapping used by the step-parity tests
(`torch_to_flax_variables`, `flax_to_torch_arrays`), so the tests do not depend on
`advseg_jax.torch_port.convert`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tests.torch_ref import models as tr

IGNORE = 255


# --------------------------------------------------------------------------- name mapping
def flax_to_torch_name(path: Sequence[str], collection: str) -> str:
  """('layer2', 'block0', 'downsample_conv', 'kernel') -> 'layer2.0.downsample.0.weight'.

  Covers the DeepLab-v2 generators (conv1, bn1, layerL/blockB/{convN,bnN,downsample_*},
  ASPP layer5/layer6 convI) and the FC discriminator (conv1..4, classifier).
  """
  *modules, leaf = path
  parts: List[str] = []
  for m in modules:
    if m.startswith("block"):
      parts.append(m[len("block"):])
    elif m == "downsample_conv":
      parts.append("downsample.0")
    elif m == "downsample_bn":
      parts.append("downsample.1")
    elif modules[0] in ("layer5", "layer6") and m.startswith("conv") and m != modules[0]:
      parts.append("conv2d_list." + m[len("conv"):])
    else:
      parts.append(m)
  if collection == "batch_stats":
    leaf_name = {"mean": "running_mean", "var": "running_var"}[leaf]
  else:
    leaf_name = {"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]
  return ".".join(parts + [leaf_name])


def _flatten(tree: Dict, prefix: Tuple[str, ...] = ()) -> Dict[Tuple[str, ...], Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) or hasattr(v, "items"):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _unflatten(flat: Dict[Tuple[str, ...], Any]) -> Dict:
  out: Dict = {}
  for path, v in flat.items():
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return out


def _to_flax_layout(array: np.ndarray) -> np.ndarray:
  return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array  # OIHW -> HWIO


def _to_torch_layout(array: np.ndarray) -> np.ndarray:
  return array.transpose(3, 2, 0, 1) if array.ndim == 4 else array  # HWIO -> OIHW


def torch_to_flax_variables(module: Union[nn.Module, Dict[str, Any]],
                            template: Dict[str, Any]) -> Dict[str, Any]:
  """Flax variables (numpy) with `template`'s structure, values from `module.state_dict()`
  (or from a {torch name: array} dict).

  `template` is e.g. `jax.eval_shape(model.init, ...)` ({'params': ..., 'batch_stats': ...}
  for a generator, the bare params tree for a discriminator with collection 'params').
  Every template leaf must exist in the state_dict with the matching shape.
  """
  items = module.state_dict().items() if isinstance(module, nn.Module) else module.items()
  sd = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
        for k, v in items}
  collections = template if "params" in template else {"params": template}
  out = {}
  for col, tree in collections.items():
    flat = {}
    for path, leaf in _flatten(tree).items():
      name = flax_to_torch_name(path, col)
      if name not in sd:
        raise KeyError(f"{name} (flax {col}/{'/'.join(path)}) not in the torch state_dict")
      value = _to_flax_layout(sd[name]).astype(np.float32)
      if tuple(value.shape) != tuple(leaf.shape):
        raise ValueError(f"{name}: torch {value.shape} vs flax {tuple(leaf.shape)}")
      flat[path] = np.ascontiguousarray(value)
    out[col] = _unflatten(flat)
  return out if "params" in template else out["params"]


def flax_to_torch_arrays(tree: Dict[str, Any], collection: str = "params") -> Dict[str, np.ndarray]:
  """{torch state_dict name: numpy array in torch layout} for a Flax variable collection."""
  return {flax_to_torch_name(path, collection): _to_torch_layout(np.asarray(v))
          for path, v in _flatten(tree).items()}


def torch_arrays(module: nn.Module, *, buffers: bool = False) -> Dict[str, np.ndarray]:
  """Parameters (or BN running statistics with `buffers=True`) as numpy, by state_dict name."""
  if buffers:
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()
            if k.endswith(("running_mean", "running_var"))}
  return {k: v.detach().cpu().numpy().copy() for k, v in module.named_parameters()}


def optimizer_state_arrays(module: nn.Module, optimizer, key: str) -> Dict[str, np.ndarray]:
  """{param name: optimizer.state[p][key]} (e.g. 'momentum_buffer', 'exp_avg', 'exp_avg_sq')
  for the parameters that have that state (those that ever had a gradient)."""
  out = {}
  for name, p in module.named_parameters():
    state = optimizer.state.get(p, {})
    if key in state:
      out[name] = state[key].detach().cpu().numpy().copy()
  return out


# --------------------------------------------------------------------------- optimisers
def lr_poly(base_lr: float, i_iter: int, max_iter: int, power: float) -> float:
  return base_lr * ((1 - float(i_iter) / max_iter) ** power)


def generator_param_groups(model: tr.ResNet, lr: float, *, duplicates: bool) -> List[Dict]:
  """The originals' `optim_parameters`: backbone (1x) and classifier(s) (10x).

  `duplicates=True` keeps the original listing (each parameter once per ancestor module,
  docs/FIDELITY.md §1.5); False lists each parameter once, in the same order.
  """
  groups = tr.optim_parameters(model, lr)
  if duplicates:
    return groups
  out = []
  for g in groups:
    seen, params = set(), []
    for p in g["params"]:
      if id(p) not in seen:
        seen.add(id(p))
        params.append(p)
    out.append({"params": params, "lr": g["lr"]})
  return out


def make_generator_optimizer(model: tr.ResNet, lr: float, momentum: float = 0.9,
                             weight_decay: float = 5e-4, legacy: bool = False):
  """`optim.SGD(model.optim_parameters(args), lr, momentum, weight_decay)`.

  legacy=False: modern `torch.optim.SGD` over de-duplicated groups. legacy=True: the
  PyTorch 0.2-0.4 step over the original duplicated listing (`torch_reference.LegacySGD`).
  """
  groups = generator_param_groups(model, lr, duplicates=legacy)
  if legacy:
    return tr.LegacySGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
  return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def make_discriminator_optimizer(model_d: nn.Module, lr: float):
  """`optim.Adam(model_D.parameters(), lr, betas=(0.9, 0.99))`."""
  return torch.optim.Adam(model_d.parameters(), lr=lr, betas=(0.9, 0.99))


def adjust_learning_rate(optimizer, base_lr: float, i_iter: int, num_steps: int,
                         power: float) -> None:
  """G: group 0 = lr_poly, group 1 (classifier) = 10x; D (one group): lr_poly."""
  lr = lr_poly(base_lr, i_iter, num_steps, power)
  optimizer.param_groups[0]["lr"] = lr
  if len(optimizer.param_groups) > 1:
    optimizer.param_groups[1]["lr"] = lr * 10


# --------------------------------------------------------------------------- helpers
def _interp(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
  """`nn.Upsample(size, mode='bilinear', align_corners=True)` (torch >= 0.4 branch)."""
  return F.interpolate(x, size=tuple(int(s) for s in size), mode="bilinear", align_corners=True)


def _images(x: np.ndarray) -> torch.Tensor:
  """NHWC numpy -> NCHW tensor of torch's default dtype (float64 runs are diagnostics)."""
  x = np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))
  return torch.from_numpy(x).to(torch.get_default_dtype())


def _labels(y: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.asarray(y).astype(np.int64))


def make_d_label(label: float, ignore_mask: np.ndarray) -> torch.Tensor:
  """AdvSemiSeg `make_D_label`: [N,1,H,W] filled with `label`, 255 where `ignore_mask`."""
  mask = np.expand_dims(ignore_mask, axis=1)
  d_label = np.ones(mask.shape) * label
  d_label[mask] = IGNORE
  return torch.from_numpy(d_label).to(torch.get_default_dtype())


def one_hot(label: np.ndarray, num_classes: int) -> torch.Tensor:
  """AdvSemiSeg `one_hot`: [N,H,W] -> [N,C,H,W] float; ignored pixels all-zero."""
  label = np.asarray(label)
  out = np.zeros((label.shape[0], num_classes, label.shape[1], label.shape[2]), np.float32)
  for c in range(num_classes):
    out[:, c] = label == c
  return torch.from_numpy(out).to(torch.get_default_dtype())


def _chunk(batch: Dict[str, Dict[str, np.ndarray]], n: int, k: int):
  if n == 1:
    return batch
  out = {}
  for stream, arrays in batch.items():
    out[stream] = {}
    for key, v in arrays.items():
      size = v.shape[0] // n
      out[stream][key] = v[k * size:(k + 1) * size]
  return out


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
  for p in module.parameters():
    p.requires_grad = flag


def _acc(totals: Dict[str, float], key: str, value, iter_size: int) -> None:
  v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
  totals[key] = totals.get(key, 0.0) + v / iter_size


# --------------------------------------------------------------------------- AdvSemiSeg
@dataclasses.dataclass
class AdvSemiHP:
  """AdvSemiSeg train.py arguments used by one iteration (docs/FIDELITY.md §6.1)."""
  num_classes: int
  lambda_adv_pred: float = 0.01
  lambda_semi: float = 0.1
  lambda_semi_adv: float = 0.001
  # A number, or a callable(conf ndarray [N,H,W]) -> number chosen when the semi CE first
  # needs it (tests use this to put the threshold inside the confidence distribution).
  mask_T: Union[float, Callable[[np.ndarray], float]] = 0.2
  semi_start: int = 5000
  semi_start_adv: int = 0
  d_remain: bool = True
  iter_size: int = 1
  learning_rate: float = 2.5e-4
  learning_rate_d: float = 1e-4
  num_steps: int = 20000
  power: float = 0.9


def advsemi_iteration(model: tr.Res_Deeplab, model_d: nn.Module, optimizer, optimizer_d,
                      i_iter: int, batch: Dict[str, Dict[str, np.ndarray]],
                      hp: AdvSemiHP) -> Dict[str, float]:
  """One outer iteration of AdvSemiSeg `train.py` (docs/FIDELITY.md §6.3). `model` is in train()
  mode (batch-statistics BN, running stats updated), BN affine frozen. Returns the loss terms
  (unweighted CE/BCE values except `g/loss_semi_adv`, which includes lambda_semi_adv like the
  engine's metric) and `semi/mask_ratio`, `mask_T` (the threshold used, if any)."""
  pred_label, gt_label = 0, 1
  bce_loss = tr.BCEWithLogitsLoss2d()
  ce = tr.CrossEntropy2d()
  optimizer.zero_grad()
  adjust_learning_rate(optimizer, hp.learning_rate, i_iter, hp.num_steps, hp.power)
  optimizer_d.zero_grad()
  adjust_learning_rate(optimizer_d, hp.learning_rate_d, i_iter, hp.num_steps, hp.power)
  out: Dict[str, float] = {}
  n = hp.iter_size
  for sub_i in range(n):
    sub = _chunk(batch, n, sub_i)
    # ---- train G (D frozen; its gradient still flows into G) ----
    _set_requires_grad(model_d, False)
    pred_remain = None
    ignore_mask_remain = None
    if (hp.lambda_semi > 0 or hp.lambda_semi_adv > 0) and i_iter >= hp.semi_start_adv:
      images = _images(sub["unlabelled"]["image"])
      size = images.shape[2:]
      pred = _interp(model(images), size)
      pred_remain = pred.detach()
      d_out = _interp(model_d(F.softmax(pred, dim=1)), size)
      d_out_sigmoid = torch.sigmoid(d_out).detach().numpy().squeeze(axis=1)
      ignore_mask_remain = np.zeros(d_out_sigmoid.shape).astype(bool)
      semi_adv_term = bce_loss(d_out, make_d_label(gt_label, ignore_mask_remain))
      loss_semi_adv = hp.lambda_semi_adv * semi_adv_term / n
      _acc(out, "g/loss_semi_adv", semi_adv_term, n)  # logged unweighted
      if hp.lambda_semi <= 0 or i_iter < hp.semi_start:
        loss_semi_adv.backward()
        _acc(out, "g/loss_semi", 0.0, n)
        if not callable(hp.mask_T):  # not used by the original here; the engine logs it
          _acc(out, "semi/mask_ratio", float((d_out_sigmoid >= hp.mask_T).mean()), n)
      else:
        mask_t = hp.mask_T(d_out_sigmoid) if callable(hp.mask_T) else hp.mask_T
        out["mask_T"] = float(mask_t)
        semi_ignore_mask = d_out_sigmoid < mask_t
        semi_gt = pred.detach().numpy().argmax(axis=1)
        semi_gt[semi_ignore_mask] = IGNORE
        semi_ratio = 1.0 - float(semi_ignore_mask.sum()) / semi_ignore_mask.size
        _acc(out, "semi/mask_ratio", semi_ratio, n)
        if semi_ratio == 0.0:
          _acc(out, "g/loss_semi", 0.0, n)  # no backward at all for this branch
        else:
          loss_semi = hp.lambda_semi * ce(pred, _labels(semi_gt))
          loss_semi = loss_semi / n
          _acc(out, "g/loss_semi", loss_semi * n / hp.lambda_semi, n)
          loss_semi = loss_semi + loss_semi_adv
          loss_semi.backward()
    # ---- labelled ----
    images = _images(sub["labelled"]["image"])
    labels_np = np.asarray(sub["labelled"]["label"])
    ignore_mask = labels_np == IGNORE
    size = images.shape[2:]
    pred = _interp(model(images), size)
    loss_seg = ce(pred, _labels(labels_np))
    d_out = _interp(model_d(F.softmax(pred, dim=1)), size)
    loss_adv_pred = bce_loss(d_out, make_d_label(gt_label, ignore_mask))
    loss = loss_seg + hp.lambda_adv_pred * loss_adv_pred
    loss = loss / n
    loss.backward()
    _acc(out, "g/loss_seg", loss_seg, n)
    _acc(out, "g/loss_adv", loss_adv_pred, n)
    # ---- train D ----
    _set_requires_grad(model_d, True)
    pred = pred.detach()
    if hp.d_remain:
      if pred_remain is None:
        raise RuntimeError("D_remain with the unlabelled branch off: the original raises "
                           "NameError (pred_remain undefined)")
      pred = torch.cat((pred, pred_remain), 0)
      ignore_mask = np.concatenate((ignore_mask, ignore_mask_remain), axis=0)
    d_out = _interp(model_d(F.softmax(pred, dim=1)), size)
    loss_d = bce_loss(d_out, make_d_label(pred_label, ignore_mask))
    _acc(out, "d/loss_fake", loss_d, n)
    loss_d = loss_d / n / 2
    loss_d.backward()
    labels_gt = np.asarray(sub["gt"]["label"])
    d_gt_v = one_hot(labels_gt, hp.num_classes)
    ignore_mask_gt = labels_gt == IGNORE
    d_out = _interp(model_d(d_gt_v), size)
    loss_d = bce_loss(d_out, make_d_label(gt_label, ignore_mask_gt))
    _acc(out, "d/loss_real", loss_d, n)
    loss_d = loss_d / n / 2
    loss_d.backward()
  optimizer.step()
  optimizer_d.step()
  return out


# --------------------------------------------------------------------------- AdaptSegNet
@dataclasses.dataclass
class AdaptSegHP:
  """AdaptSegNet train_gta2cityscapes_multi.py arguments (docs/FIDELITY.md §7.1)."""
  lambda_seg: float = 0.1
  lambda_adv_target1: float = 0.0002
  lambda_adv_target2: float = 0.001
  gan: str = "Vanilla"  # or "LS"
  iter_size: int = 1
  learning_rate: float = 2.5e-4
  learning_rate_d: float = 1e-4
  num_steps: int = 250000
  power: float = 0.9


def adaptseg_iteration(model: tr.DeeplabMulti, model_d1: nn.Module, model_d2: nn.Module,
                       optimizer, optimizer_d1, optimizer_d2, i_iter: int,
                       batch: Dict[str, Dict[str, np.ndarray]], hp: AdaptSegHP) -> Dict[str, float]:
  """One outer iteration of AdaptSegNet (docs/FIDELITY.md §7.2), multi-level, `model.train()`.

  Engine metric names: `g/loss_seg` (main CE), `g/loss_seg_aux`, `g/loss_adv(_aux)` (target
  -> source label, unweighted), `d/loss_real(_aux)` (source side, label 0),
  `d/loss_fake(_aux)` (target side, label 1).
  """
  source_label, target_label = 0, 1
  if hp.gan == "Vanilla":
    gan_loss = nn.BCEWithLogitsLoss()
  elif hp.gan == "LS":
    gan_loss = nn.MSELoss()
  else:
    raise ValueError(hp.gan)
  ce = tr.CrossEntropy2d()
  optimizer.zero_grad()
  adjust_learning_rate(optimizer, hp.learning_rate, i_iter, hp.num_steps, hp.power)
  for opt in (optimizer_d1, optimizer_d2):
    opt.zero_grad()
    adjust_learning_rate(opt, hp.learning_rate_d, i_iter, hp.num_steps, hp.power)
  out: Dict[str, float] = {}
  n = hp.iter_size
  fill = lambda t, v: torch.full(t.shape, float(v))
  for sub_i in range(n):
    sub = _chunk(batch, n, sub_i)
    _set_requires_grad(model_d1, False)
    _set_requires_grad(model_d2, False)
    # source
    images = _images(sub["source"]["image"])
    labels = _labels(sub["source"]["label"])
    pred1, pred2 = model(images)
    pred1, pred2 = _interp(pred1, images.shape[2:]), _interp(pred2, images.shape[2:])
    loss_seg1 = ce(pred1, labels)
    loss_seg2 = ce(pred2, labels)
    loss = (loss_seg2 + hp.lambda_seg * loss_seg1) / n
    loss.backward()
    _acc(out, "g/loss_seg", loss_seg2, n)
    _acc(out, "g/loss_seg_aux", loss_seg1, n)
    # target
    images_t = _images(sub["target"]["image"])
    pt1, pt2 = model(images_t)
    pt1, pt2 = _interp(pt1, images_t.shape[2:]), _interp(pt2, images_t.shape[2:])
    d_out1 = model_d1(F.softmax(pt1, dim=1))
    d_out2 = model_d2(F.softmax(pt2, dim=1))
    loss_adv1 = gan_loss(d_out1, fill(d_out1, source_label))
    loss_adv2 = gan_loss(d_out2, fill(d_out2, source_label))
    loss = (hp.lambda_adv_target1 * loss_adv1 + hp.lambda_adv_target2 * loss_adv2) / n
    loss.backward()
    _acc(out, "g/loss_adv", loss_adv2, n)
    _acc(out, "g/loss_adv_aux", loss_adv1, n)
    # D
    _set_requires_grad(model_d1, True)
    _set_requires_grad(model_d2, True)
    pred1, pred2 = pred1.detach(), pred2.detach()
    d_out1 = model_d1(F.softmax(pred1, dim=1))
    d_out2 = model_d2(F.softmax(pred2, dim=1))
    loss_d1 = gan_loss(d_out1, fill(d_out1, source_label))
    loss_d2 = gan_loss(d_out2, fill(d_out2, source_label))
    _acc(out, "d/loss_real_aux", loss_d1, n)
    _acc(out, "d/loss_real", loss_d2, n)
    (loss_d1 / n / 2).backward()
    (loss_d2 / n / 2).backward()
    pt1, pt2 = pt1.detach(), pt2.detach()
    d_out1 = model_d1(F.softmax(pt1, dim=1))
    d_out2 = model_d2(F.softmax(pt2, dim=1))
    loss_d1 = gan_loss(d_out1, fill(d_out1, target_label))
    loss_d2 = gan_loss(d_out2, fill(d_out2, target_label))
    _acc(out, "d/loss_fake_aux", loss_d1, n)
    _acc(out, "d/loss_fake", loss_d2, n)
    (loss_d1 / n / 2).backward()
    (loss_d2 / n / 2).backward()
  optimizer.step()
  optimizer_d1.step()
  optimizer_d2.step()
  return out
