"""Pure training and evaluation steps; the caller jits (or pmaps) them.

A batch is a dict of arrays: ``image`` (B, H, W, 3) normalised, ``saliency`` (B, H, W, 1)
in [0, 1], optionally ``fixation_map`` (B, H, W, 1) and, for evaluation, ``mask`` (B,)
marking real (not padding) examples.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

LossFn = Callable[..., jnp.ndarray]


class TrainState(train_state.TrainState):
  """Flax TrainState plus the (usually frozen) BatchNorm statistics."""

  batch_stats: Any = None


def create_train_state(model: flax.linen.Module, variables: dict[str, Any],
                       tx: optax.GradientTransformation) -> TrainState:
  return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                           batch_stats=variables.get('batch_stats', {}))


def _forward(state: TrainState, params: Any, images: jnp.ndarray, train: bool,
             update_stats: bool) -> tuple[jnp.ndarray, Any]:
  variables = {'params': params, 'batch_stats': state.batch_stats}
  if update_stats:
    preds, updates = state.apply_fn(variables, images, train=train, mutable=['batch_stats'])
    return preds, updates['batch_stats']
  return state.apply_fn(variables, images, train=train), state.batch_stats


def train_step(state: TrainState, batch: dict[str, jnp.ndarray], *, loss_fn: LossFn,
               update_stats: bool = False, axis_name: str | None = None,
               grad_norm_every: int = 1) -> tuple[TrainState, dict[str, jnp.ndarray]]:
  """One optimiser step on ``loss_fn(pred, saliency, fixation_map)``.

  Metrics: ``loss`` and ``grad_norm``, the global L2 norm of the gradients.
  ``update_stats``: the model trains its BatchNorm statistics (``train_bn``).
  ``grad_norm_every``: compute ``grad_norm`` only when the new step count is a multiple
  of it (NaN otherwise), e.g. on logging steps. On CPU the norm costs 1-3% of a DINet
  step: its squares are written out and read back, not fused into Adam's update.
  ``axis_name``: set when run under ``jax.pmap``: gradients, BatchNorm statistics and
  metrics are averaged over that axis. Under ``jax.jit`` with a sharded batch the loss is
  already the global mean, so no collective is written here.
  """

  def compute_loss(params):
    preds, new_stats = _forward(state, params, batch['image'], True, update_stats)
    # A model with auxiliary outputs (e.g. the linear branch-visualisation decoder)
    # returns a tuple in training; every output is trained with the same loss.
    outputs = preds if isinstance(preds, (tuple, list)) else (preds,)
    loss = sum(loss_fn(p, batch['saliency'], batch.get('fixation_map')) for p in outputs)
    return loss, new_stats

  if grad_norm_every < 1:
    raise ValueError(f'grad_norm_every must be >= 1, got {grad_norm_every}')
  (loss, new_stats), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
    loss = jax.lax.pmean(loss, axis_name)
    if update_stats:
      new_stats = jax.lax.pmean(new_stats, axis_name)
  state = state.apply_gradients(grads=grads, batch_stats=new_stats)
  if grad_norm_every == 1:
    grad_norm = optax.tree.norm(grads)
  else:
    grad_norm = jax.lax.cond(state.step % grad_norm_every == 0,
                             lambda g: optax.tree.norm(g).astype(jnp.float32),
                             lambda g: jnp.full((), jnp.nan, jnp.float32), grads)
  metrics = {'loss': loss, 'grad_norm': grad_norm}
  return state, metrics


def eval_step(state: TrainState, batch: dict[str, jnp.ndarray], *, loss_fn: LossFn,
              axis_name: str | None = None) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """Predictions and masked loss sums for one evaluation batch.

  Returns ``(preds, {'loss_sum', 'count'})``; the validation loss is
  ``loss_sum / count`` over all batches, so padding examples never count.
  """
  preds, _ = _forward(state, state.params, batch['image'], False, False)
  per_example = jax.vmap(
      lambda p, s, f: loss_fn(p[None], s[None], None if f is None else f[None]))(
          preds, batch['saliency'], batch.get('fixation_map'))
  mask = batch['mask'].astype(jnp.float32)
  sums = {'loss_sum': jnp.sum(per_example * mask), 'count': jnp.sum(mask)}
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  return preds, sums
