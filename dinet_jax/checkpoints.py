"""Orbax checkpoints of a training run: the latest (to resume) and the best (to use).

Layout under the workdir::

    checkpoints/<step>/{state,meta}   latest, every N steps and at each epoch's end
    best/<step>/{state,meta}          the lowest validation loss so far (one kept)

``state`` holds ``step``, ``params``, ``batch_stats`` and ``opt_state``; ``meta`` is
JSON: the epoch position, early-stopping bookkeeping and the model config, so that a
checkpoint directory alone is enough to rebuild the model. Orbax writes each step to a
temporary directory and renames it when complete, so a crash never leaves a
half-written checkpoint that would be restored.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

LATEST_DIR = 'checkpoints'
BEST_DIR = 'best'


def _manager(directory: str, max_to_keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True,
      enable_async_checkpointing=False, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=('state', 'meta'))


def state_to_tree(state: Any) -> dict[str, Any]:
  return {'step': state.step, 'params': state.params, 'batch_stats': state.batch_stats,
          'opt_state': state.opt_state}


def all_finite(tree: Any) -> bool:
  return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


class RunCheckpoints:
  """The latest and best checkpoints of one workdir."""

  def __init__(self, workdir: str, keep_latest: int = 2):
    self.latest = _manager(os.path.join(workdir, LATEST_DIR), keep_latest)
    self.best = _manager(os.path.join(workdir, BEST_DIR), 1)

  def save(self, state: Any, meta: dict[str, Any], *, best: bool = False) -> None:
    """Saves a host-side ``state`` with its JSON ``meta``; refuses non-finite values."""
    tree = state_to_tree(state)
    step = int(tree['step'])
    if not all_finite(tree['params']):
      raise FloatingPointError(
          f'Refusing to checkpoint step {step}: the parameters hold NaN or Inf.')
    manager = self.best if best else self.latest
    if step in manager.all_steps():
      return
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))
    manager.wait_until_finished()

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def restore_latest(self, state: Any) -> tuple[Any, dict[str, Any]] | None:
    """(state, meta) from the newest latest-checkpoint, or None when there is none."""
    step = self.latest.latest_step()
    if step is None:
      return None
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_to_tree(state))
    restored = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    tree = restored['state']
    state = state.replace(step=tree['step'], params=tree['params'],
                          batch_stats=tree['batch_stats'], opt_state=tree['opt_state'])
    return state, dict(restored['meta'])

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def resolve_checkpoint(path: str, which: str = 'best') -> tuple[str, int]:
  """Finds a checkpoint step directory from a workdir (``which``: best, latest or a step
  number) or from a checkpoint manager directory. Returns (manager directory, step)."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'No checkpoint or workdir at {path!r}.')
  candidates = []
  if which in ('best', 'latest') or which.isdigit():
    order = [BEST_DIR, LATEST_DIR] if which == 'best' else [LATEST_DIR, BEST_DIR]
    candidates = [os.path.join(path, d) for d in order] + [path]
  else:
    raise ValueError(f"checkpoint must be 'best', 'latest' or a step number, got {which!r}")
  for directory in candidates:
    if not os.path.isdir(directory):
      continue
    steps = ocp.utils.checkpoint_steps(directory)
    if not steps:
      continue
    if which.isdigit():
      if int(which) in steps:
        return directory, int(which)
      continue
    return directory, max(steps)
  if os.path.isdir(os.path.join(path, 'state')) and os.path.isdir(os.path.join(path, 'meta')):
    return os.path.dirname(path), int(os.path.basename(path))
  raise FileNotFoundError(
      f'No {which!r} checkpoint under {path!r} (looked in {", ".join(candidates)}).')


def load_checkpoint(path: str, which: str = 'best') -> tuple[dict[str, Any], dict[str, Any]]:
  """``({'params', 'batch_stats'}, meta)`` of a workdir's or checkpoint directory's
  checkpoint, as numpy arrays, for evaluation and prediction (no optimiser state)."""
  directory, step = resolve_checkpoint(path, which)
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    restored = checkpointer.restore(os.path.join(directory, str(step)), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  tree = restored['state']
  meta = dict(restored['meta'])
  meta.setdefault('step', step)
  return {'params': tree['params'], 'batch_stats': tree['batch_stats']}, meta


def write_json(path: str, obj: Any) -> None:
  """Writes JSON atomically (temporary file, then rename)."""
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)
