"""Workdir bookkeeping: the config and library versions of a run, and its summary writer."""

from __future__ import annotations

import json
import os
import platform
from typing import Any

import jax
import jaxlib
import ml_collections
from flax import traverse_util

from dinet_jax.checkpoints import write_json

CONFIG_FILE = 'config.json'
VERSIONS_FILE = 'versions.json'
# Fields that may change when a run is resumed: they do not change what is trained.
RESUMABLE_FIELDS = frozenset({
    'num_epochs', 'max_train_steps', 'log_every_steps', 'checkpoint_every_steps',
    'num_summary_images', 'early_stopping_patience', 'eval_metrics', 'data_dir',
    'manual_dir', 'parallelism', 'eval_batch_size'})


def versions() -> dict[str, str]:
  import flax
  import optax
  import orbax.checkpoint

  return {'python': platform.python_version(), 'jax': jax.__version__,
          'jaxlib': jaxlib.__version__,
          'flax': flax.__version__, 'optax': optax.__version__,
          'orbax-checkpoint': orbax.checkpoint.__version__,
          'backend': jax.default_backend(), 'device_count': str(jax.device_count()),
          'process_count': str(jax.process_count())}


def config_differences(saved: dict[str, Any], config: dict[str, Any]) -> list[str]:
  """The fields (dotted) whose values differ, ignoring ``RESUMABLE_FIELDS``."""
  norm = lambda d: {'.'.join(k): json.loads(json.dumps(v))
                    for k, v in traverse_util.flatten_dict(d).items()}
  a, b = norm(saved), norm(config)
  return sorted(f'{k}: {a.get(k, "<unset>")!r} in the workdir, {b.get(k, "<unset>")!r} now'
                for k in set(a) | set(b)
                if k.split('.')[0] not in RESUMABLE_FIELDS and a.get(k) != b.get(k))


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Checks that ``workdir`` is empty or holds a run of a compatible config, then writes
  ``config.json`` and ``versions.json`` (process 0)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  current = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    diffs = config_differences(saved, current)
    if diffs:
      raise ValueError(
          f'{workdir} holds a run with a different config, so it cannot be resumed:\n  ' +
          '\n  '.join(diffs) +
          f'\nUse another --workdir, or delete {workdir} to start this run fresh.')
  if jax.process_index() == 0:
    write_json(path, current)
    write_json(os.path.join(workdir, VERSIONS_FILE), versions())


class _NoWriter:
  def scalar(self, *args, **kwargs):
    pass

  image = scalar
  flush = scalar


def summary_writer(workdir: str) -> Any:
  """TensorBoard writer on process 0; a no-op elsewhere."""
  if jax.process_index() != 0:
    return _NoWriter()
  from flax.metrics import tensorboard
  return tensorboard.SummaryWriter(os.path.join(workdir, 'tensorboard'))
