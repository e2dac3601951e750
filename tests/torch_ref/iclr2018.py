"""PyTorch rendering of one iteration of the ICLR-2018 reproduction's `train.py` (NCHW, CPU).

Written from the behaviour docs/FIDELITY.md §8 describes (mohitzsh `train_adv` /
`train_semi`), in current PyTorch:

  labelled step (`train_adv`, and `train_semi` when the labelled loader was picked):
    cpmap = softmax(G(img)) without gradient (G in train mode: BN statistics move)
    D: zero grads; LDr = (1 - s) NLL(D(onehot), real) + s NLL(D(onehot), fake);
       LDf = NLL(D(cpmap), fake); backward both; poly lr; D.step()
    G: zero grads; LGce = NLL(log_softmax(G(img)), mask); LGadv = NLL(D(softmax(G(img))), real)
       with the updated D; (LGce + lam_adv LGadv).backward(); poly lr; G.step()
  unlabelled step (`train_semi`, unlabelled loader picked):
    no D step; LGadv as above; the argmax of softmax(G) where D's real probability > t_semi
    (a numpy one-hot mask), LGsemi = -mean(log_softmax(G) selected by it), added as
    lam_semi LGsemi only when the mask is non-empty; poly lr; G.step()

G is `Res_Deeplab` with the 4-branch ASPP, every parameter trainable (BN affine too), and the
in-forward upsampling (3 x bilinear x2 `align_corners=True`, drop the last row/column);
`optim.SGD(momentum 0.9, weight_decay, nesterov=True)` over all parameters. D is `Dis` with
`optim.SGD(lr, weight_decay 1e-4, momentum 0.5, nesterov=True)`. Labels pass through
`IgnoreLabelClass` (255 -> 0) first. Batches use the engine's layout: NHWC numpy
`{'labelled': {'image', 'label'}}` or `{'unlabelled': {'image'}}`; the returned loss dicts use
the engine's metric names, unweighted.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tests.torch_ref import models as tr


@dataclasses.dataclass
class IclrHP:
  num_classes: int
  lam_adv: float
  lam_semi: float
  t_semi: Union[float, Callable[[np.ndarray], float]]  # callable: picked from D's confidences
  d_label_smooth: float
  g_lr: float
  d_lr: float
  max_iter: int
  power: float = 0.9


def generator(num_classes: int, layers: Sequence[int], width: int) -> tr.Res_Deeplab:
  """`ResDeeplab`: the fixed 4-branch ASPP and no frozen parameter."""
  model = tr.Res_Deeplab(num_classes, aspp_branches=4, layers=layers, width=width)
  for p in model.parameters():
    p.requires_grad = True
  return model


def g_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
  """G's forward with its in-forward upsampling (41 -> 81 -> 161 -> 321)."""
  out = model(x)
  for _ in range(3):
    out = F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=True)
    out = out[:, :, :-1, :-1]
  return out


def make_generator_optimizer(model: nn.Module, lr: float, weight_decay: float = 1e-4):
  return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr,
                         momentum=0.9, weight_decay=weight_decay, nesterov=True)


def make_discriminator_optimizer(model_d: nn.Module, lr: float):
  return torch.optim.SGD(model_d.parameters(), lr=lr, weight_decay=1e-4, momentum=0.5,
                         nesterov=True)


def poly_lr_scheduler(optimizer, init_lr: float, itr: int, max_iter: int, power: float) -> None:
  if itr > max_iter:
    return
  for group in optimizer.param_groups:
    group["lr"] = init_lr * (1 - float(itr) / max_iter) ** power


def _images(x: np.ndarray) -> torch.Tensor:
  x = np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))
  return torch.from_numpy(x).to(torch.get_default_dtype())


def _labels_to_background(y: np.ndarray) -> np.ndarray:
  """`IgnoreLabelClass(ignore=255, base=0)`."""
  y = np.asarray(y).astype(np.int64)
  return np.where(y == 255, 0, y)


def _one_hot(y: np.ndarray, num_classes: int) -> torch.Tensor:
  """`OneHotEncode`: [N, H, W] -> [N, C, H, W]."""
  out = np.stack([(y == c) for c in range(num_classes)], axis=1).astype(np.float64)
  return torch.from_numpy(out).to(torch.get_default_dtype())


def _nll(logp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
  return F.nll_loss(logp, target)


def labelled_iteration(model, model_d, opt_g, opt_d, itr: int, batch: Dict[str, Any],
                       hp: IclrHP) -> Dict[str, float]:
  """One labelled step; returns its loss terms."""
  img = _images(batch["labelled"]["image"])
  mask_np = _labels_to_background(batch["labelled"]["label"])
  mask = torch.from_numpy(mask_np)
  with torch.no_grad():
    cpmap = F.softmax(g_forward(model, img), dim=1)
  n, _, h, w = cpmap.shape
  targetf = torch.zeros((n, h, w), dtype=torch.long)
  targetr = torch.ones((n, h, w), dtype=torch.long)

  opt_d.zero_grad()
  confr = F.log_softmax(model_d(_one_hot(mask_np, hp.num_classes)), dim=1)
  ldr = (1 - hp.d_label_smooth) * _nll(confr, targetr) + hp.d_label_smooth * _nll(confr, targetf)
  ldr.backward()
  conff = F.log_softmax(model_d(cpmap.detach()), dim=1)
  ldf = _nll(conff, targetf)
  ldf.backward()
  poly_lr_scheduler(opt_d, hp.d_lr, itr, hp.max_iter, hp.power)
  opt_d.step()

  opt_g.zero_grad()
  opt_d.zero_grad()
  cmap = g_forward(model, img)
  conff = F.log_softmax(model_d(F.softmax(cmap, dim=1)), dim=1)
  lgce = _nll(F.log_softmax(cmap, dim=1), mask)
  lgadv = _nll(conff, targetr)
  lg = lgce + hp.lam_adv * lgadv
  lg.backward()
  poly_lr_scheduler(opt_g, hp.g_lr, itr, hp.max_iter, hp.power)
  opt_g.step()
  return {k: float(v.detach()) for k, v in (
      ("d/loss", ldr + ldf), ("d/loss_real", ldr), ("d/loss_fake", ldf), ("g/loss", lg),
      ("g/loss_seg", lgce), ("g/loss_adv", lgadv))}


def unlabelled_iteration(model, model_d, opt_g, itr: int, batch: Dict[str, Any],
                         hp: IclrHP) -> Dict[str, float]:
  """One unlabelled step (after `--wait_semi`); returns its loss terms and the threshold."""
  img = _images(batch["unlabelled"]["image"])
  opt_g.zero_grad()
  cpmap = g_forward(model, img)
  cpmapsmax = F.softmax(cpmap, dim=1)
  conf = model_d(cpmapsmax)
  confsmax = F.softmax(conf, dim=1)
  n, _, h, w = cpmap.shape
  targetr = torch.ones((n, h, w), dtype=torch.long)
  lgadv = _nll(F.log_softmax(conf, dim=1), targetr)
  hardpred = torch.max(cpmapsmax, 1)[1].detach().numpy()
  confnp = confsmax[:, 1].detach().numpy()
  t_semi = hp.t_semi(confnp) if callable(hp.t_semi) else hp.t_semi
  idx = np.zeros(cpmap.detach().numpy().transpose(0, 2, 3, 1).shape, np.uint8)
  idx[confnp > t_semi] = np.identity(hp.num_classes, dtype=idx.dtype)[hardpred[confnp > t_semi]]
  lg = hp.lam_adv * lgadv
  lgsemi = 0.0
  if np.count_nonzero(idx) != 0:
    sel = torch.from_numpy(idx.transpose(0, 3, 1, 2).copy()).bool()
    lgsemi_t = -1 * F.log_softmax(cpmap, dim=1).masked_select(sel).mean()
    lgsemi = float(lgsemi_t.detach())
    lg = lg + hp.lam_semi * lgsemi_t
  lg.backward()
  poly_lr_scheduler(opt_g, hp.g_lr, itr, hp.max_iter, hp.power)
  opt_g.step()
  return {"g/loss": float(lg.detach()), "g/loss_semi_adv": float(lgadv.detach()),
          "g/loss_semi": lgsemi,
          "semi/mask_ratio": float((confnp > t_semi).mean()), "t_semi": float(t_semi)}
