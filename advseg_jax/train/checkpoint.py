"""Training checkpoints (orbax): save, restore, fall back from a corrupt latest step.

Workdir layout (all written by `advseg_jax.train.loop`):

    WORKDIR/checkpoints/<step>/        orbax CheckpointManager step directories, items
        g_state/                       generator GState (params, batch_stats, opt_state, step)
        d_state/                       discriminator TrainState (absent for 'supervised')
        meta/                          JSON: step, rng, seed, best mIoU, split, config, method,
                                       checksums (CRC-32 of every g_state / d_state leaf)
        data_iter/                     JSON: each process's data-iterator states
    WORKDIR/checkpoints.corrupt/       step directories that failed to restore (moved aside)
    WORKDIR/best_model/, final_model/  model directories (`advseg_jax.train.export`)

States are stored without a device axis (unreplicated host numpy), so a checkpoint restores
on any device count. Saving is asynchronous; a step directory appears only once complete
(orbax writes to a temporary directory and renames it). Loading a generator for inference
from a workdir or step directory: `advseg_jax.inference.loading`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.experimental import multihost_utils

from advseg_jax.config.diff import json_default, json_normal
from advseg_jax.train import tree_checks

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints.corrupt"
BEST_MODEL = "best_model"
FINAL_MODEL = "final_model"
TMP_MARKER = ".orbax-checkpoint-tmp"
ITEMS = ("g_state", "d_state", "meta", "data_iter")

class CheckpointError(Exception):
  """A checkpoint or model directory cannot be used; the message names the path."""


class ConfigChangeError(CheckpointError):
  """The workdir's saved config differs from the new one
  (see `advseg_jax.config.diff.config_differences`)."""


class CheckpointWriteError(CheckpointError):
  """A checkpoint or model could not be written (full disk, permissions); what was already
  saved is untouched and the message names the latest complete step."""


OS_PROBLEMS = re.compile(
    r"(No space left on device|Disk quota exceeded|Permission denied|Read-only file system|"
    r"File too large|Input/output error)")


def write_problem(e: BaseException) -> str:
  """The operating-system reason of a failed write (orbax wraps it deep in its message)."""
  if isinstance(e, OSError) and e.strerror:
    return f"{e.strerror} (errno {e.errno})"
  m = OS_PROBLEMS.search(str(e))
  if m:
    code = re.search(r"os_error_code='?(\d+)", str(e))
    return m.group(1) + (f" (errno {code.group(1)})" if code else "")
  return one_line(e, 400)


# ----------------------------------------------------------------------------- helpers
def _abs(path: str) -> str:
  return os.path.abspath(os.path.expanduser(os.fspath(path)))


def one_line(e: BaseException, limit: int = 240) -> str:
  """`'ErrorType: message'` on one line, cut after `limit` characters."""
  msg = " ".join(str(e).split()) or type(e).__name__
  if len(msg) > limit:
    msg = msg[:limit] + "..."
  return f"{type(e).__name__}: {msg}"


_one_line = one_line  # the name `advseg_jax.inference.loading` imports


def to_host(tree: Any) -> Any:
  """Leaves -> numpy arrays (0-d arrays, not numpy scalars: orbax rejects those)."""
  return jax.tree.map(lambda x: np.asarray(x), tree)


def _abstract(tree: Any) -> Any:
  """ShapeDtypeStructs of a tree of arrays (or of ShapeDtypeStructs, e.g. from eval_shape)."""
  def one(x):
    if isinstance(x, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(x.shape, x.dtype)
    x = np.asarray(x)
    return jax.ShapeDtypeStruct(x.shape, x.dtype)
  return jax.tree.map(one, tree)


def _process_allgather_json(obj: Any) -> List[Any]:
  """Every process's JSON-able `obj`, in process order (multi-host data-iterator states)."""
  if jax.process_count() == 1:
    return [obj]
  raw = np.frombuffer(json.dumps(obj, default=json_default).encode(), np.uint8)
  lengths = np.asarray(multihost_utils.process_allgather(np.array([raw.size], np.int64)))
  lengths = lengths.reshape(-1)
  buf = np.zeros((int(lengths.max()),), np.uint8)
  buf[:raw.size] = raw
  bufs = np.asarray(multihost_utils.process_allgather(buf))
  return [json.loads(bytes(bufs[i, :int(lengths[i])]).decode()) for i in range(len(lengths))]


# ----------------------------------------------------------------------------- manager
@dataclasses.dataclass
class Restored:
  step: int
  g: Any
  d: Any
  meta: Dict[str, Any]
  data_states: Optional[Dict[str, Any]]   # this process's {stream: iterator state}
  path: str


def _stored_leaves(item_dir: str) -> Optional[set]:
  """The leaf paths of a stored orbax item (None if its metadata is unreadable)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  try:
    with ocp.StandardCheckpointer() as ckptr:
      tree = ckptr.metadata(item_dir).item_metadata.tree
  except Exception:  # pylint: disable=broad-except
    return None
  return set(tree_checks.leaf_shapes(tree))


def _g_template_for(item_dir: str, g_template: Any, g_upgrade: Optional[Tuple[Any, Callable]]):
  """`(template, convert)` to restore the stored g_state with: `g_upgrade`'s older layout
  when the stored leaves are that layout's, else `(g_template, None)`."""
  if g_upgrade is None:
    return g_template, None
  stored = _stored_leaves(item_dir)
  if stored is None or stored == set(tree_checks.leaf_shapes(g_template)):
    return g_template, None
  old_template, convert = g_upgrade
  return (old_template, convert) if stored == set(tree_checks.leaf_shapes(old_template)) else (
      g_template, None)


class TrainCheckpointer:
  """orbax `CheckpointManager` over `WORKDIR/checkpoints` with this project's items.

  `save()` is asynchronous (the previous save is awaited first); `restore_latest()` walks
  back from the newest step, reports each step directory that fails to restore (unreadable,
  other shapes, or bytes that differ from the checksums written with it) in one line and
  moves it to `WORKDIR/checkpoints.corrupt/` once an older step restored.
  """

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True,
               report: Optional[Callable[[str], None]] = None):
    self.workdir = _abs(workdir)
    self.directory = os.path.join(self.workdir, CHECKPOINT_DIR)
    self.keep = int(keep)
    self.async_save = bool(async_save)
    self.report = report or log.warning
    self.problems: List[str] = []
    self._in_flight: Optional[int] = None
    try:
      os.makedirs(self.directory, exist_ok=True)
    except OSError as e:
      raise CheckpointWriteError(f"cannot create the checkpoint directory {self.directory}: "
                                 f"{write_problem(e)}") from None
    self._report_unfinished()
    self._manager = self._open()

  def _open(self):
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    options = ocp.CheckpointManagerOptions(
        max_to_keep=self.keep, create=True, enable_async_checkpointing=self.async_save,
        cleanup_tmp_directories=True)
    return ocp.CheckpointManager(self.directory, options=options)

  def _report_unfinished(self) -> None:
    for name in sorted(os.listdir(self.directory)):
      if TMP_MARKER in name:
        msg = (f"checkpoint {os.path.join(self.directory, name)} is incomplete (a save that "
               f"never finished); ignored and removed")
        self.problems.append(msg)
        if jax.process_index() == 0:
          self.report(msg)

  # -------------------------------------------------------------------------- queries
  def all_steps(self) -> List[int]:
    return sorted(int(s) for s in self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(int(step)))

  # -------------------------------------------------------------------------- save
  def save(self, step: int, g: Any, d: Any, meta: Mapping[str, Any],
           data_states: Optional[Mapping[str, Any]] = None) -> None:
    """Starts saving (asynchronously); `g`/`d` must be host trees without a device axis."""
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    g, d = to_host(g), (None if d is None else to_host(d))
    sums = {"kind": tree_checks.CHECKSUM_KIND, "g_state": tree_checks.checksums(g)}
    if d is not None:
      sums["d_state"] = tree_checks.checksums(d)
    items = {
        "g_state": ocp.args.StandardSave(g),
        "meta": ocp.args.JsonSave(json_normal(dict(meta, step=int(step), checksums=sums))),
        "data_iter": ocp.args.JsonSave({
            "process_count": jax.process_count(),
            "states": json_normal(_process_allgather_json(dict(data_states or {}))),
        }),
    }
    if d is not None:
      items["d_state"] = ocp.args.StandardSave(d)
    self.wait()  # the previous asynchronous save: its error is reported against its step
    self._in_flight = int(step)
    try:
      self._manager.save(int(step), args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # pylint: disable=broad-except
      self._in_flight = None
      raise self._write_error(int(step), e) from None

  def wait(self) -> None:
    """Blocks until the pending save is on disk; CheckpointWriteError if it failed."""
    step, self._in_flight = self._in_flight, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(step, e) from None

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self._manager.close()

  def _write_error(self, step: Optional[int], e: BaseException) -> CheckpointWriteError:
    done = [s for s in valid_steps(self.directory) if s != step]
    latest = (f"the latest complete checkpoint is step {done[0]} and nothing already saved "
              f"was changed" if done else "no complete checkpoint exists yet")
    msg = (f"could not write the checkpoint of step {step} to {self.step_dir(step or 0)}: "
           f"{write_problem(e)}; {latest}. Free disk space or make {self.directory} "
           f"writable, then run the same command again to resume.")
    self.problems.append(msg)
    return CheckpointWriteError(msg)

  # -------------------------------------------------------------------------- restore
  def read_meta(self, step: int) -> Dict[str, Any]:
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    r = self._manager.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    meta = dict(r.meta)
    if int(meta.get("step", -1)) != int(step):
      raise CheckpointError(f"meta says step {meta.get('step')!r}, directory is step {step}")
    return meta

  def _restore_step(self, step: int, g_template: Any, d_template: Any,
                    check_meta: Optional[Callable[[Dict[str, Any]], None]],
                    g_upgrade: Optional[Tuple[Any, Callable]] = None) -> Restored:
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    path = self.step_dir(step)
    try:
      meta = self.read_meta(step)
    except CheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"meta unreadable ({one_line(e)})") from None
    if check_meta is not None:
      check_meta(meta)  # ConfigChangeError etc. propagate: not a corrupt checkpoint
    g_template, convert = _g_template_for(os.path.join(path, "g_state"), g_template, g_upgrade)
    items = {"g_state": ocp.args.StandardRestore(_abstract(g_template)),
             "data_iter": ocp.args.JsonRestore()}
    if d_template is not None:
      items["d_state"] = ocp.args.StandardRestore(_abstract(d_template))
    for name in items:
      if not os.path.isdir(os.path.join(path, name)):
        raise CheckpointError(f"item {name}/ is missing")
    try:
      r = self._manager.restore(int(step), args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(one_line(e)) from None
    self._verify(path, meta, r, g_template, d_template)
    return Restored(step=int(step), g=convert(r["g_state"]) if convert else r["g_state"],
                    d=r["d_state"] if d_template is not None else None,
                    meta=meta, data_states=self._data_states(path, r.data_iter), path=path)

  def _verify(self, path: str, meta: Dict[str, Any], r: Any, g_template: Any,
              d_template: Any) -> None:
    """CheckpointError when a restored item has other leaves or shapes than the model, or
    other bytes than were written (the checksums in meta)."""
    items = {"g_state": g_template} if d_template is None else {"g_state": g_template,
                                                                "d_state": d_template}
    problems = [tree_checks.shape_problem(name, r[name], t) for name, t in items.items()]
    sums = meta.get("checksums")
    if sums is None and jax.process_index() == 0:
      log.info("checkpoint %s has no checksums (written by an earlier version): restored "
               "without verifying its contents", path)
    elif sums is not None:
      problems += [tree_checks.checksum_problem(name, r[name], sums.get(name, {}))
                   for name in items]
    problem = next((p for p in problems if p), None)
    if problem:
      raise CheckpointError(problem)

  @staticmethod
  def _data_states(path: str, data_iter: Any) -> Optional[Dict[str, Any]]:
    """This process's iterator states, if the checkpoint's process count is this run's."""
    data = dict(data_iter or {})
    saved_states = data.get("states") or []
    if int(data.get("process_count", 1)) == jax.process_count() and saved_states:
      return saved_states[jax.process_index()]
    if saved_states:
      log.warning("checkpoint %s was written by %s processes, this run has %d: the data "
                  "iterators restart from their seeds (the data order will differ)", path,
                  data.get("process_count"), jax.process_count())
    return None

  def restore_latest(self, g_template: Any, d_template: Any = None,
                     check_meta: Optional[Callable[[Dict[str, Any]], None]] = None,
                     g_upgrade: Optional[Tuple[Any, Callable[[Any], Any]]] = None
                     ) -> Optional[Restored]:
    """The newest step that restores, or None when there is no checkpoint.

    A step that fails is reported (`checkpoint DIR is incomplete or corrupt (PROBLEM);
    using step M`) and, once an older step restored, moved to `checkpoints.corrupt/`. If no
    step restores, CheckpointError lists the problems and nothing is moved.
    `g_upgrade=(old_template, convert)`: a g_state stored in the layout of `old_template`
    (an earlier version's) is restored with it and returned as `convert(restored)`.
    """
    failed: List[Tuple[int, str]] = []
    for step in reversed(self.all_steps()):
      try:
        restored = self._restore_step(step, g_template, d_template, check_meta, g_upgrade)
      except ConfigChangeError:
        raise
      except CheckpointError as e:
        failed.append((step, str(e)))
        continue
      for bad_step, problem in failed:
        msg = (f"checkpoint {self.step_dir(bad_step)} is incomplete or corrupt ({problem}); "
               f"using step {step} instead")
        self.problems.append(msg)
        if jax.process_index() == 0:
          self.report(msg)
      if failed:
        self._quarantine([s for s, _ in failed])
      return restored
    if failed:
      raise CheckpointError(
          "no checkpoint in " + self.directory + " could be restored (nothing was changed; "
          "if the config changed the model, use a new --workdir): " +
          "; ".join(f"step {s}: {p}" for s, p in failed))
    return None

  def _quarantine(self, steps: Sequence[int]) -> None:
    self._manager.close()
    if jax.process_index() == 0:
      dest_root = os.path.join(self.workdir, CORRUPT_DIR)
      os.makedirs(dest_root, exist_ok=True)
      for s in steps:
        src = self.step_dir(s)
        if os.path.isdir(src):
          dest = os.path.join(dest_root, f"{s}-{time.strftime('%Y%m%d-%H%M%S')}")
          shutil.move(src, dest)
          log.info("moved %s to %s", src, dest)
    self._manager = self._open()


def valid_steps(ckpt_dir: str) -> List[int]:
  """Numbered step directories under `ckpt_dir`, newest first."""
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted((int(n) for n in os.listdir(ckpt_dir) if n.isdigit()), reverse=True)
