"""Data parallelism of the training engine (`advseg_jax.train.parallel`) on fake CPU devices.

One AdvSemiSeg configuration with every term on (unlabelled branch with semi CE and
semi-adv, labelled CE + adv, D on labelled + unlabelled fakes vs one-hot GT; labels with 255),
global batch 8 per stream, two steps, the same random weights and batches everywhere:

* `pmap` on 8 devices == one device (`jit`) on the whole batch, for `bn_mode='frozen'` and for
  `sync_bn=True` (per-device BN statistics legitimately differ, so plain batch-stat BN is not
  compared);
* `shard_map` == `pmap` (sync BN);
* two processes on localhost with 4 devices each (`initialize_distributed`, each feeding its
  half of the global batch) == one process with 8 devices (sync BN).
* no mode recompiles the step on its second call.

Every run is a subprocess (`XLA_FLAGS=--xla_force_host_platform_device_count=N` must be set
before jax is imported, and multi-process needs its own processes); they start together in
a module fixture. This file is also the worker: `python tests/test_parallel.py ...`.

Every run is float64 (`JAX_ENABLE_X64=1`, `model.dtype = disc.dtype = 'float64'`), so one
tolerance holds everywhere: relative error (max|a - b| / max|b|) <= 1e-10 for every metric,
parameter, BN running statistic (per tensor) and gradient-linear optimiser state (SGD
momentum, Adam's moments; per model). Devices sum in a different order from one device; in
float32 that order noise flips ReLU decisions near a kink (a gradient moved by 1.8e-3 on one
tensor) and the signs of near-zero Adam updates, so the float32 version of this test had to
tolerate 2e-2 on gradients and a fraction of flipped D weights. In float64 the same runs
agree to ~1e-15 (a kink flip would need a pre-activation within ~1e-14). The parallel code
is dtype-agnostic (pmean / psum of whatever the step computes); the float32 step itself is
compared with PyTorch in tests/test_step_parity.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # end-to-end: CI runs it, the fast tier does not

TOL = 1e-10
GLOBAL_BATCH = 8
HW = (33, 41)
K = 3
STEPS = 2
WORKER_TIMEOUT_S = 900


# =========================================================================== worker side
def _config(bn: str):
  from advseg_jax.config.defaults import base_config  # pylint: disable=import-outside-toplevel
  from advseg_jax.config.validation import validate  # pylint: disable=import-outside-toplevel
  c = base_config()
  c.method.name = "advsemi"
  c.method.lambda_adv, c.method.lambda_semi, c.method.lambda_semi_adv = 0.5, 0.5, 0.3
  c.method.semi_start = 0
  c.method.mask_T = 0.5  # replaced by _pick_mask_t
  c.model.depths, c.model.width, c.model.num_classes = "tiny", 8, K
  c.disc.ndf = 8
  c.model.dtype = c.disc.dtype = "float64"
  c.batch_size = GLOBAL_BATCH
  c.num_steps = 10
  c.labelled_fraction = 0.5
  c.optim_g.lr, c.optim_d.lr = 2.5e-4, 1e-4  # the originals'
  if bn == "frozen":
    c.model.bn_mode = "frozen"
  elif bn == "sync":
    c.model.sync_bn = True
  else:
    raise ValueError(bn)
  validate(c, num_devices=GLOBAL_BATCH)
  return c


def _host_states(config, seed: int):
  """Random weights and BN statistics (no `init` compile), as host numpy TrainStates."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from advseg_jax.models import build_discriminator, build_generator  # pylint: disable=import-outside-toplevel
  from advseg_jax.train.state import create_train_states  # pylint: disable=import-outside-toplevel

  g, d = build_generator(config.model), build_discriminator(config.disc)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    shape = leaf.shape
    if name.endswith("['var']"):
      return rng.uniform(0.5, 2.0, shape)
    if name.endswith("['scale']"):
      return rng.uniform(0.5, 1.5, shape)
    if name.endswith("['kernel']"):
        # Variance-preserving, on unit-scale images (`_batches`), so that with frozen BN
      # (running statistics ~1) the logits stay O(1) and the softmax into D is not one-hot.
      std = 1.0 / np.sqrt(np.prod(shape[:-1]))
      return rng.normal(0, std, shape)
    return rng.normal(0, 0.1, shape)

  g_vars = jax.tree_util.tree_map_with_path(fill, jax.eval_shape(
      lambda k: g.init(k, jnp.zeros((1, 33, 33, 3))), jax.random.key(0)))
  d_params = {"main": jax.tree_util.tree_map_with_path(fill, jax.eval_shape(
      lambda k: d.init(k, jnp.zeros((1, 64, 64, K))), jax.random.key(0))["params"])}
  states = jax.jit(lambda gv, dp: create_train_states(config, g, d, jax.random.key(0),
                                                       g_variables=gv, d_params=dp))(
                                                           g_vars, d_params)
  return jax.device_get(states)


def _batches(seed: int):
  rng = np.random.default_rng(seed + 1)
  n, (h, w) = GLOBAL_BATCH, HW

  def labels():
    lab = rng.integers(0, K, (n, h, w)).astype(np.int32)
    lab[rng.random((n, h, w)) < 0.15] = 255
    lab[:, -3:] = 255
    return lab

  return [{
      "labelled": {"image": rng.normal(0, 1, (n, h, w, 3)), "label": labels()},
      "unlabelled": {"image": rng.normal(0, 1, (n, h, w, 3)),
                     "label": np.full((n, h, w), 255, np.int32)},
      "gt": {"image": np.zeros((n, h, w, 3)), "label": labels()},
  } for _ in range(STEPS)]


def _pick_mask_t(config, host_states, batch) -> float:
  """A threshold between two images' confidences (D's 1x1 output is one confidence per image
  at these crops): the widest gap among the middle ones of the first step's unlabelled
  batch, so that some devices see every pixel masked and others none -- the global
  normalisation of the semi CE across devices matters."""
  import jax  # pylint: disable=import-outside-toplevel
  from advseg_jax import losses  # pylint: disable=import-outside-toplevel
  from advseg_jax.models.deeplab import upsample_logits  # pylint: disable=import-outside-toplevel
  from advseg_jax.models import build_discriminator, build_generator  # pylint: disable=import-outside-toplevel

  g, d = build_generator(config.model), build_discriminator(config.disc)

  def conf(g_vars, d_params, x):
    logits, _ = g.apply(g_vars, x, train=True, mutable=["batch_stats"])
    probs = jax.nn.softmax(upsample_logits(logits, x.shape[1:3]), axis=-1)
    out = upsample_logits(d.apply({"params": d_params}, probs), x.shape[1:3])
    return losses.real_probability(out).mean(axis=(1, 2))

  g_vars = {"params": host_states.g.params, "batch_stats": host_states.g.batch_stats}
  c = np.sort(np.asarray(jax.jit(conf)(g_vars, host_states.d.params["main"],
                                       batch["unlabelled"]["image"])))
  j = 2 + int(np.argmax(np.diff(c)[2:-2]))
  return float(0.5 * (c[j] + c[j + 1]))


def _flatten(prefix: str, tree) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  return {prefix + jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def run_worker(mode: str, bn: str, seed: int, out_path: str) -> None:
  """Two steps in `mode`; this process feeds its slice of the global batch. Saves states
  and metrics after every step, and how many XLA compilations happened after step 0."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.monitoring  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from advseg_jax.models import build_discriminator, build_generator  # pylint: disable=import-outside-toplevel
  from advseg_jax.train import parallel as parallel_lib  # pylint: disable=import-outside-toplevel
  from advseg_jax.train import optim  # pylint: disable=import-outside-toplevel
  from advseg_jax.train.steps import make_train_step  # pylint: disable=import-outside-toplevel

  t0 = time.time()
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, duration, **kw: compiles.append(event)
      if event == "/jax/core/compile/backend_compile_duration" else None)
  config = _config(bn)
  host_states = _host_states(config, seed)
  batches = _batches(seed)
  config.method.mask_T = _pick_mask_t(config, host_states, batches[0])
  par = parallel_lib.Parallel(mode)
  g_model = build_generator(config.model, bn_axis_name=par.axis_name)
  d_model = build_discriminator(config.disc)
  step = par.bind_train_step(make_train_step(config, g_model, d_model, par.axis_name))
  states = par.replicate(host_states)
  pc, pi = jax.process_count(), jax.process_index()
  per = GLOBAL_BATCH // pc
  keys = [jax.random.key(i) for i in range(STEPS)]
  out, compiles_at = {}, []
  for i, batch in enumerate(batches):
    mine = {s: {k: v[pi * per:(pi + 1) * per] for k, v in a.items()} for s, a in batch.items()}
    compiles_at.append(len(compiles))
    states, metrics = step(states, par.shard_batch(mine), keys[i])
    for k, v in par.metrics_to_host(metrics).items():
      out[f"step{i}/metrics/{k}"] = np.asarray(v)
    host = par.unreplicate(states)
    out.update(_flatten(f"step{i}/g_params", host.g.params))
    out.update(_flatten(f"step{i}/g_batch_stats", host.g.batch_stats))
    out.update(_flatten(f"step{i}/g_momentum",
                        optim.momentum_buffers(host.g.opt_state, host.g.params)))
    out.update(_flatten(f"step{i}/d_params", host.d.params))
    adam = [s for s in jax.tree_util.tree_leaves(
        host.d.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
            if isinstance(s, optax.ScaleByAdamState)]
    assert len(adam) == 1, host.d.opt_state
    out.update(_flatten(f"step{i}/d_adam_mu", adam[0].mu))
    out.update(_flatten(f"step{i}/d_adam_nu", adam[0].nu))
  info = {"mode": mode, "bn": bn, "process": pi, "processes": pc,
          "devices": jax.device_count(), "local_devices": jax.local_device_count(),
          "compiles_after_step0": len(compiles) - compiles_at[1],
          "mask_T": round(config.method.mask_T, 6),
          "mask_ratio": [round(float(out[f"step{i}/metrics/semi/mask_ratio"]), 4)
                         for i in range(STEPS)],
          "seconds": round(time.time() - t0, 1)}
  np.savez(out_path, __info__=np.array(json.dumps(info)), **out)
  print(json.dumps(info), flush=True)


def worker_main(argv) -> None:
  """single <seed> <outdir> <bn> <mode,mode,...>  |  multi <seed> <outdir> <bn> <mode>
  <process_id> <num_processes> <port>"""
  kind, seed, outdir, bn = argv[0], int(argv[1]), argv[2], argv[3]
  if kind == "single":
    for mode in argv[4].split(","):
      run_worker(mode, bn, seed, os.path.join(outdir, f"{mode}_{bn}.npz"))
  elif kind == "multi":
    mode, pid, n, port = argv[4], int(argv[5]), int(argv[6]), argv[7]
    from advseg_jax.train import parallel as parallel_lib  # pylint: disable=import-outside-toplevel
    # CPU cross-process collectives: jax 0.10.2 uses gloo by default.
    parallel_lib.initialize_distributed(f"localhost:{port}", n, pid)
    run_worker(mode, bn, seed, os.path.join(outdir, f"multi{pid}_{mode}_{bn}.npz"))
  else:
    raise SystemExit(f"unknown worker kind {kind!r}")


# =========================================================================== test side
def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_ENABLE_X64"] = "1"
  env.pop("JAX_COORDINATOR_ADDRESS", None)
  env.pop("JAX_NUM_PROCESSES", None)
  env.pop("JAX_PROCESS_ID", None)
  return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Starts all workers at once (they are mostly single-threaded compiles) and waits."""
  from tests import seeds  # pylint: disable=import-outside-toplevel (workers run this file)
  seed = seeds.draw(bits=31)
  outdir = str(tmp_path_factory.mktemp("parallel"))
  me = os.path.abspath(__file__)
  py = sys.executable
  port = _free_port()
  jobs = {
      "single frozen": ([py, me, "single", str(seed), outdir, "frozen", "jit,pmap"], 8),
      "single sync": ([py, me, "single", str(seed), outdir, "sync", "jit,pmap,shard_map"], 8),
      "multi 0": ([py, me, "multi", str(seed), outdir, "sync", "pmap", "0", "2", str(port)], 4),
      "multi 1": ([py, me, "multi", str(seed), outdir, "sync", "pmap", "1", "2", str(port)], 4),
  }
  t0 = time.time()
  procs = {name: subprocess.Popen(cmd, env=_env(dev), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
           for name, (cmd, dev) in jobs.items()}
  logs, failed = {}, []
  deadline = time.time() + WORKER_TIMEOUT_S
  for name, p in procs.items():
    try:
      logs[name], _ = p.communicate(timeout=max(deadline - time.time(), 1))
    except subprocess.TimeoutExpired:
      for q in procs.values():  # a dead peer leaves the other process waiting
        if q.poll() is None:
          q.kill()
      logs[name], _ = p.communicate()
    if p.returncode != 0:
      failed.append(name)
  print(f"parallel workers: {time.time() - t0:.1f}s (seed {seed})")
  for name in procs:
    for line in logs[name].splitlines():
      if line.startswith("{"):
        print(f"  {name}: {line}")
  if failed:
    tails = "\n".join(f"--- {n} (rc {procs[n].returncode}):\n" + logs[n][-3000:] for n in failed)
    pytest.fail(f"parallel workers failed (seed {seed}):\n{tails}")
  return outdir, seed


def _load(outdir: str, name: str) -> dict:
  with np.load(os.path.join(outdir, name + ".npz")) as f:
    data = {k: f[k] for k in f.files}
  data["__info__"] = json.loads(str(data["__info__"]))
  return data


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  scale = np.abs(b).max()
  diff = np.abs(a - b).max()
  return float(diff / scale) if scale > 0 else float(diff)


def _group(key: str) -> str:
  """"step1/g_momentum['conv1']['kernel']" -> 'step1/g_momentum'; metrics -> 'step1/metrics'."""
  if "/metrics/" in key:
    return key.split("/metrics/", 1)[0] + "/metrics"
  return key.split("[", 1)[0]


def _compare(got: dict, want: dict, title: str, seed: int, tol: float = TOL) -> dict:
  """Per-tensor checks for metrics / params / BN stats, whole-model for gradient states."""
  keys = [k for k in want if k != "__info__"]
  assert set(keys) == {k for k in got if k != "__info__"}, title
  worst, failures = {}, []
  grad_groups = {}
  for k in keys:
    grp = _group(k)
    if grp.endswith(("g_momentum", "d_adam_mu", "d_adam_nu")):
      num, den = grad_groups.get(grp, (0.0, 0.0))
      a, b = got[k].astype(np.float64), want[k].astype(np.float64)
      grad_groups[grp] = (max(num, float(np.abs(a - b).max()) if a.size else 0.0),
                          max(den, float(np.abs(b).max()) if b.size else 0.0))
      continue
    err = _rel(got[k], want[k])
    if err > worst.get(grp, (-1.0, ""))[0]:
      worst[grp] = (err, k)
    if not err <= tol:
      failures.append(f"{k}: rel err {err:.3e} > {tol:g}")
  for grp, (num, den) in grad_groups.items():
    err = num / den if den > 0 else num
    worst[grp] = (err, "whole model")
    if not err <= tol:
      failures.append(f"{grp}: rel err {err:.3e} > {tol:g}")
  print(f"{title} (seed {seed})")
  for grp, (err, k) in sorted(worst.items()):
    print(f"  {grp:<24s} max rel err {err:.2e}  ({k})")
  assert not failures, f"{title} (seed {seed}):\n" + "\n".join(failures)
  return worst


def _check_conditioning(run: dict) -> None:
  """The second step moves some G tensor by more than 1e-4 of itself, so a wrong update
  would show six orders of magnitude above the 1e-10 parameter tolerance (printed)."""
  moves = {}
  for k in run:
    if k.startswith("step1/g_params"):
      p0 = run[k.replace("step1/", "step0/", 1)].astype(np.float64)
      scale = np.abs(p0).max()
      if scale > 0:
        moves[k] = float(np.abs(run[k] - p0).max() / scale)
  worst = max(moves, key=moves.get)
  print(f"  largest relative G update in step 1: {moves[worst]:.2e} ({worst})")
  assert moves[worst] > 1e-4, (worst, moves[worst])


def _no_recompile(run: dict) -> None:
  info = run["__info__"]
  assert info["compiles_after_step0"] == 0, (
      f"{info['mode']} recompiled the step {info['compiles_after_step0']} time(s) on its "
      f"second call: {info}")


@pytest.mark.parametrize("bn", ["frozen", "sync"], ids=["bn_frozen", "sync_bn"])
def test_pmap_8_devices_equals_one_device(runs, bn):
  outdir, seed = runs
  one, pm = _load(outdir, f"jit_{bn}"), _load(outdir, f"pmap_{bn}")
  assert one["__info__"]["devices"] == 8 and pm["__info__"]["local_devices"] == 8
  for r in (one, pm):
    _no_recompile(r)
  _compare(pm, one, f"pmap x8 vs jit x1, {bn}", seed)
  _check_conditioning(one)


def test_shard_map_equals_pmap(runs):
  outdir, seed = runs
  pm, sm = _load(outdir, "pmap_sync"), _load(outdir, "shard_map_sync")
  _no_recompile(sm)
  _compare(sm, pm, "shard_map vs pmap, sync BN", seed)
  identical = all(np.array_equal(sm[k], pm[k]) for k in pm if k != "__info__")
  print(f"  bit-identical: {identical}")


def test_two_processes_equal_one_process(runs):
  outdir, seed = runs
  one = _load(outdir, "pmap_sync")
  m0, m1 = _load(outdir, "multi0_pmap_sync"), _load(outdir, "multi1_pmap_sync")
  for r, pid in ((m0, 0), (m1, 1)):
    info = r["__info__"]
    assert (info["processes"], info["process"], info["devices"], info["local_devices"]) == (
        2, pid, 8, 4), info
    _no_recompile(r)
  # Both processes hold the same replicated states and the same global metrics.
  for k in m0:
    if k != "__info__":
      assert np.array_equal(m0[k], m1[k]), k
  _compare(m0, one, "2 processes x 4 devices vs 1 process x 8 devices, sync BN", seed)


if __name__ == "__main__":
  worker_main(sys.argv[1:])
