"""Convolution helper shared by all model parts: explicit torchvision-style padding."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# torchvision initialises ResNet convolutions with kaiming_normal_(mode='fan_out').
TORCH_RESNET_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# The authors' Keras layers (DIM, decoder) used Keras' default, Glorot uniform.
KERAS_INIT = nn.initializers.glorot_uniform()


def conv2d(x: jnp.ndarray, features: int, kernel_size: int, *, stride: int = 1,
           dilation: int = 1, padding: int | None = None, use_bias: bool = False,
           name: str, dtype: Any = jnp.float32,
           kernel_init: Any = TORCH_RESNET_INIT) -> jnp.ndarray:
  """A bias-free 2-D convolution with symmetric padding, as torch's Conv2d pads.

  Call it inside a compact method: the convolution becomes a submodule named ``name``.

  ``padding`` defaults to ``dilation * (kernel_size - 1) // 2``, which keeps the size for
  stride 1 and matches torchvision's choices for its strided convolutions.
  """
  if padding is None:
    padding = dilation * (kernel_size - 1) // 2
  conv = nn.Conv(
      features,
      (kernel_size, kernel_size),
      strides=(stride, stride),
      kernel_dilation=(dilation, dilation),
      padding=((padding, padding), (padding, padding)),
      use_bias=use_bias,
      dtype=dtype,
      kernel_init=kernel_init,
      name=name,
  )
  return conv(x)
