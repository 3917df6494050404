"""Context modules placed between the backbone and the decoder."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from dinet_jax.models.layers import KERAS_INIT, conv2d

Dtype = Any


class DilatedInception(nn.Module):
  """The dilated inception module (DIM) of DINet.

  A shared 1x1 convolution (+ReLU) reduces the backbone features to ``features``
  channels; parallel 3x3 convolutions (+ReLU) at the given dilation ``rates`` read it
  and are fused by ``'sum'`` (DINet; no activation after the sum) or ``'concat'``. No
  biases and no BatchNorm. With ``rates=()`` it is the paper's "baseline": only the 1x1
  layer.
  """

  features: int = 256
  rates: Sequence[int] = (4, 8, 16)
  fusion: str = 'sum'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train
    if self.fusion not in ('sum', 'concat'):
      raise ValueError(f"fusion must be 'sum' or 'concat', got {self.fusion!r}")
    x = nn.relu(conv2d(x, self.features, 1, name='reduce', dtype=self.dtype,
                       kernel_init=KERAS_INIT))
    if not self.rates:
      return x
    branches = [
        nn.relu(conv2d(x, self.features, 3, dilation=rate, name=f'branch{i}',
                       dtype=self.dtype, kernel_init=KERAS_INIT))
        for i, rate in enumerate(self.rates)
    ]
    if self.fusion == 'sum':
      return sum(branches[1:], branches[0])
    return jnp.concatenate(branches, axis=-1)


def baseline_context(features: int = 256, dtype: Dtype = jnp.float32) -> DilatedInception:
  """The paper's baseline context module: only the 1x1 reduction layer."""
  return DilatedInception(features=features, rates=(), dtype=dtype)
