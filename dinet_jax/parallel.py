"""Data parallelism over all devices: ``jit`` over a 1-D mesh (default) or ``pmap``.

Both run the same pure step from ``dinet_jax.steps``. With ``jit`` the batch is sharded
along the mesh axis and the state replicated, and XLA inserts the gradient all-reduce;
with ``pmap`` the step averages explicitly with ``lax.pmean``. With trained BatchNorm
(``model.train_bn``), jit normalises with the statistics of the whole global batch, pmap
with each device's part of it (running statistics are then averaged with ``pmean``, as in
flax's ImageNet example). ``Parallel`` hides the
difference from the training loop: it places the state and host batches, and returns
host-side (unreplicated) values.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from dinet_jax import steps

AXIS = 'data'


@dataclasses.dataclass
class Parallel:
  """Compiled train/eval steps and data placement for one parallelism mode.

  ``global_batch_size`` is the batch over all processes; each process feeds its
  ``global_batch_size // process_count`` examples.
  """

  mode: str
  loss_fn: Callable[..., jnp.ndarray]
  update_stats: bool = False
  grad_norm_every: int = 1  # see steps.train_step
  devices: list[Any] | None = None  # default: all devices

  def __post_init__(self):
    if self.mode not in ('jit', 'pmap'):
      raise ValueError(f"parallelism must be 'jit' or 'pmap', got {self.mode!r}")
    self.devices = list(self.devices or jax.devices())
    self.num_devices = len(self.devices)
    self.mesh = jax.sharding.Mesh(np.array(self.devices), (AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P(AXIS))
    train = functools.partial(steps.train_step, loss_fn=self.loss_fn,
                              update_stats=self.update_stats,
                              grad_norm_every=self.grad_norm_every)
    evaluate = functools.partial(steps.eval_step, loss_fn=self.loss_fn)
    if self.mode == 'jit':
      self._train = jax.jit(train, donate_argnums=0,
                            out_shardings=(self.replicated, self.replicated))
      self._eval = jax.jit(evaluate, out_shardings=(self.batch_sharding, self.replicated))
    else:
      if jax.process_count() > 1:
        raise ValueError("parallelism='pmap' is supported on one process; use 'jit'.")
      self._train = jax.pmap(functools.partial(train, axis_name=AXIS), axis_name=AXIS,
                             devices=self.devices, donate_argnums=0)
      self._eval = jax.pmap(functools.partial(evaluate, axis_name=AXIS), axis_name=AXIS,
                            devices=self.devices)

  def check_batch_size(self, global_batch_size: int, what: str = 'batch_size') -> None:
    if global_batch_size % self.num_devices:
      raise ValueError(
          f'config.{what}={global_batch_size} is not divisible by the {self.num_devices} '
          f'devices; use a multiple of {self.num_devices}.')

  def put_state(self, state: steps.TrainState) -> steps.TrainState:
    if self.mode == 'jit':
      return jax.device_put(state, self.replicated)
    # pmap's layout: a leading axis of one copy per device, sharded over the devices.
    n = self.num_devices
    return jax.device_put(jax.tree.map(lambda x: np.broadcast_to(x, (n, *np.shape(x))), state),
                          self.batch_sharding)

  def get_state(self, state: steps.TrainState) -> steps.TrainState:
    """A host copy of the (replicated) state, e.g. for checkpointing."""
    if self.mode == 'pmap':
      state = jax.tree.map(lambda x: x[0], state)
    return jax.device_get(state)

  def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """Places this process's part of a global batch (numpy arrays only)."""
    arrays = {k: v for k, v in batch.items()
              if isinstance(v, np.ndarray) and v.dtype != object}
    if self.mode == 'jit':
      return {k: jax.make_array_from_process_local_data(self.batch_sharding, v)
              for k, v in arrays.items()}
    n = self.num_devices
    return {k: jax.device_put(v.reshape(n, -1, *v.shape[1:]), self.batch_sharding)
            for k, v in arrays.items()}

  def train_step(self, state, batch):
    state, metrics = self._train(state, self.put_batch(batch))
    if self.mode == 'pmap':
      metrics = jax.tree.map(lambda x: x[0], metrics)
    return state, metrics

  def eval_step(self, state, batch) -> tuple[np.ndarray, dict[str, float]]:
    """Predictions of this process's examples (host numpy) and summed loss/count."""
    preds, sums = self._eval(state, self.put_batch(batch))
    if self.mode == 'pmap':
      preds = np.asarray(preds).reshape(-1, *preds.shape[2:])
      sums = jax.tree.map(lambda x: x[0], sums)
    elif jax.process_count() > 1:
      preds = np.concatenate([np.asarray(s.data) for s in preds.addressable_shards])
    else:
      preds = np.asarray(preds)
    return preds, jax.tree.map(float, sums)


def sync_processes(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
