"""The DINet decoder: a few 3x3 convolutions, a sigmoid, and bilinear upsampling."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dinet_jax.models.layers import KERAS_INIT, conv2d

Dtype = Any


def upsample_bilinear(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
  """Bilinear resize of NHWC maps to ``size`` (half-pixel centres, as torch's
  ``F.interpolate(mode='bilinear', align_corners=False)`` when upsampling)."""
  n, _, _, c = x.shape
  return jax.image.resize(x, (n, size[0], size[1], c), method='bilinear')


class ConvDecoder(nn.Module):
  """``num_layers`` 3x3 convs with ReLU, then a 3x3 conv to one channel + sigmoid.

  DINet uses two 256-channel layers. No biases. The sigmoid map is upsampled to the
  input size by the caller (``DINet``), because the output size is not a multiple of
  the feature size for every input.
  """

  features: int = 256
  num_layers: int = 2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train
    for i in range(self.num_layers):
      x = nn.relu(conv2d(x, self.features, 3, name=f'conv{i}', dtype=self.dtype,
                         kernel_init=KERAS_INIT))
    # The one-channel logits and the sigmoid stay float32 also in bfloat16 models.
    x = conv2d(x.astype(jnp.float32), 1, 3, name='out', dtype=jnp.float32,
               kernel_init=KERAS_INIT)
    return nn.sigmoid(x)
