"""Optimiser and the authors' step-decayed learning rate."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax


def step_decay_schedule(base_lr: float, steps_per_epoch: int, *, decay_every_epochs: int = 2,
                        factor: float = 0.1, floor: float = 1e-7) -> optax.Schedule:
  """``base_lr * factor ** (epoch // decay_every_epochs)``, never below ``floor``.

  With the defaults: 1e-4, 1e-4, 1e-5, 1e-5, 1e-6, ... per epoch, as in the authors'
  Keras ``LearningRateScheduler``. ``epoch`` is ``step // steps_per_epoch``, so a resumed
  run continues the same schedule from its step count.
  """
  if steps_per_epoch <= 0:
    raise ValueError(f'steps_per_epoch must be positive, got {steps_per_epoch}')

  def schedule(count: jnp.ndarray) -> jnp.ndarray:
    epoch = jnp.asarray(count) // steps_per_epoch
    lr = base_lr * jnp.power(factor, (epoch // decay_every_epochs).astype(jnp.float32))
    return jnp.maximum(lr, floor)

  return schedule


def create_optimizer(config: Any, steps_per_epoch: int) -> tuple[optax.GradientTransformation,
                                                                  optax.Schedule]:
  """Adam (the authors' betas and eps) with the step-decayed learning rate."""
  schedule = step_decay_schedule(
      config.learning_rate, steps_per_epoch, decay_every_epochs=config.lr_decay_epochs,
      factor=config.lr_decay_factor, floor=config.lr_floor)
  tx = optax.adam(schedule, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)
  return tx, schedule
