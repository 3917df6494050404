"""A deconvolution (transposed-convolution) decoder, the alternative of Table V.

The paper tried "different number of convolutional or deconvolutional layers before the
prediction layer (one convolutional layer followed by a sigmoid activation)". It does
not give the deconvolutions' kernel size or stride; here each one is a bias-free 4x4
transposed convolution with stride 2 (doubling the resolution, kernel divisible by the
stride, as in FCN-style decoders), ``features`` filters and ReLU. The prediction layer
is the same 3x3 convolution to one channel + sigmoid as ``ConvDecoder``'s. The map is at
``2**num_layers`` times the feature resolution; ``DINet`` resizes it bilinearly to the
input size as for every decoder.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dinet_jax.models.layers import KERAS_INIT, conv2d

Dtype = Any


class DeconvDecoder(nn.Module):
  """``num_layers`` 4x4 stride-2 transposed convs (+ReLU), then 3x3 conv to 1 + sigmoid."""

  features: int = 256
  num_layers: int = 2
  kernel_size: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train
    x = x.astype(self.dtype)
    for i in range(self.num_layers):
      x = nn.ConvTranspose(self.features, (self.kernel_size, self.kernel_size),
                           strides=(2, 2), padding='SAME', use_bias=False,
                           dtype=self.dtype, kernel_init=KERAS_INIT, name=f'deconv{i}')(x)
      x = nn.relu(x)
    x = conv2d(x.astype(jnp.float32), 1, 3, name='out', dtype=jnp.float32,
               kernel_init=KERAS_INIT)
    return nn.sigmoid(x)
