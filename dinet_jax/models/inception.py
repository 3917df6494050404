"""The alternative context modules of the paper's Fig. 4 and Table II: inception modules
(a)-(d) and the DeepLab ASPP head.

Module (e), the bottleneck dilated inception module (DIM) of DINet, is
``dinet_jax.models.context.DilatedInception``.

Decisions where the paper is silent, pinned down by its parameter counts
(W = 256 * 256 = 65,536 parameters of a bias-free 1x1 256->256 convolution; the
backbone gives 2048 channels):

* Every convolution has ``features`` (256) filters ("The filter numbers in our inception
  modules are all fixed to 256"), no bias, no BatchNorm, and a ReLU, as in GoogLeNet and
  in the DIM. Every k x k branch convolution reads a 1x1 "dimensionality reduction"
  convolution of its own (the yellow blocks of Fig. 4); branches are concatenated
  ("filter concatenation"; only module (e) sums).
* (a) GoogLeNet's module: a 1x1 branch, 1x1 -> 3x3, 1x1 -> 5x5, and 3x3 max pooling
  (stride 1) -> 1x1; concatenation gives 4 x 256 channels.
* (b) the 1x1 branch is dropped ("has limited influence on final results") and the
  pooling branch becomes 1x1 -> 7x7: branches 3x3, 5x5 and 7x7, 3 x 256 channels. With
  these choices (b) has exactly the paper's "additional 32W" over (a): +57W (1x1 + 7x7)
  -8W (pooling projection) -8W (1x1 branch) -9W (the decoder's first 3x3 conv reads 768
  instead of 1024 channels). With the 1x1 branch kept it would be +49W.
* (c) 3x3 convolutions dilated at 1, 2, 3 replace 3x3, 5x5, 7x7: (7^2 + 5^2 - 2 * 3^2)W
  = 56W fewer than (b), as the paper says.
* (d) the same with rates 4, 8, 16 (same parameter count as (c)); the factory gives it
  the model's DIM ``rates``, as (d) is the DIM before the bottleneck.

ASPP (Fig. 4(f)) follows DeepLab-v2's ASPP head, because the paper places it "to
replace our DIM and its followed decoder network": each of the four branches is a 3x3
convolution from the backbone features (2048 -> 256) dilated at its rate, a 1x1
convolution 256 -> 256 (both with ReLU) and a 1x1 convolution to one channel; the four
one-channel maps are summed, and "an extra linear scaling operation after sum-fusion"
puts every pixel into [0, 1]: per example, ``(s - min(s)) / (max(s) - min(s) + eps)``
over the map (the only linear map that guarantees [0, 1] for any input). The dilated
parts are then 4 x 9 x 2048 x 256 = 288W, against 8W + 3 x 9W = 35W in the DIM, the
paper's "288W versus 35W". ASPP-S uses rates (2, 4, 8, 12), ASPP-L (6, 12, 18, 24).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from dinet_jax.models.layers import KERAS_INIT, conv2d
from dinet_jax.models.pooling import max_pool

Dtype = Any

ASPP_S_RATES = (2, 4, 8, 12)
ASPP_L_RATES = (6, 12, 18, 24)


class InceptionModule(nn.Module):
  """A (dilated) inception module with concatenated branches: Fig. 4 (a)-(d).

  Branches, in concatenation order: an optional 1x1 branch; one branch per entry of
  ``kernel_sizes`` (a 1x1 reduction, then a ``k x k`` convolution dilated at the
  matching entry of ``rates``); an optional 3x3 max-pooling (stride 1) branch with a 1x1
  projection. All convolutions have ``features`` filters, ReLU, no bias.
  """

  features: int = 256
  kernel_sizes: Sequence[int] = (3, 5)
  rates: Sequence[int] | None = None
  conv1x1_branch: bool = True
  pool_branch: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train
    rates = tuple(self.rates) if self.rates is not None else (1,) * len(self.kernel_sizes)
    if len(rates) != len(self.kernel_sizes):
      raise ValueError(f'rates {rates} do not match kernel_sizes {self.kernel_sizes}')
    conv = lambda y, k, name, d=1: nn.relu(conv2d(
        y, self.features, k, dilation=d, name=name, dtype=self.dtype,
        kernel_init=KERAS_INIT))
    x = x.astype(self.dtype)
    outputs = []
    if self.conv1x1_branch:
      outputs.append(conv(x, 1, 'conv1x1'))
    for i, (k, d) in enumerate(zip(self.kernel_sizes, rates)):
      outputs.append(conv(conv(x, 1, f'branch{i}_reduce'), k, f'branch{i}', d))
    if self.pool_branch:
      pooled = max_pool(x, window=3, stride=1, padding=1)
      outputs.append(conv(pooled, 1, 'pool_proj'))
    if not outputs:
      raise ValueError('an inception module needs at least one branch')
    return jnp.concatenate(outputs, axis=-1)

  @property
  def out_features(self) -> int:
    return self.features * (len(self.kernel_sizes) + int(self.conv1x1_branch)
                            + int(self.pool_branch))


def inception_a(features: int = 256, dtype: Dtype = jnp.float32) -> InceptionModule:
  """Fig. 4(a): GoogLeNet's module (1x1, 1x1->3x3, 1x1->5x5, pool->1x1)."""
  return InceptionModule(features, (3, 5), (1, 1), True, True, dtype)


def inception_b(features: int = 256, dtype: Dtype = jnp.float32) -> InceptionModule:
  """Fig. 4(b): 1x1->3x3, 1x1->5x5, 1x1->7x7."""
  return InceptionModule(features, (3, 5, 7), (1, 1, 1), False, False, dtype)


def inception_c(features: int = 256, dtype: Dtype = jnp.float32) -> InceptionModule:
  """Fig. 4(c): 1x1->3x3 dilated at 1, 2 and 3."""
  return InceptionModule(features, (3, 3, 3), (1, 2, 3), False, False, dtype)


def inception_d(features: int = 256, dtype: Dtype = jnp.float32) -> InceptionModule:
  """Fig. 4(d): 1x1->3x3 dilated at 4, 8 and 16 (the DIM before the bottleneck)."""
  return InceptionModule(features, (3, 3, 3), (4, 8, 16), False, False, dtype)


def minmax_rescale(x: jnp.ndarray, eps: float = 1e-7) -> jnp.ndarray:
  """Per-example linear rescaling of (N, ...) maps into [0, 1]: min -> 0, max -> ~1."""
  axes = tuple(range(1, x.ndim))
  lo = jnp.min(x, axis=axes, keepdims=True)
  hi = jnp.max(x, axis=axes, keepdims=True)
  return (x - lo) / (hi - lo + eps)


class ASPP(nn.Module):
  """DeepLab-v2's ASPP as a saliency head (Fig. 4(f)): replaces the DIM *and* decoder.

  Takes backbone features, returns (N, h, w, 1) float32 maps in [0, 1] at the feature
  resolution (``DINet`` upsamples them), like ``ConvDecoder``. See the module docstring.
  """

  features: int = 256
  rates: Sequence[int] = ASPP_S_RATES
  rescale: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train
    x = x.astype(self.dtype)
    total = None
    for i, rate in enumerate(self.rates):
      y = nn.relu(conv2d(x, self.features, 3, dilation=rate, name=f'branch{i}_conv',
                         dtype=self.dtype, kernel_init=KERAS_INIT))
      y = nn.relu(conv2d(y, self.features, 1, name=f'branch{i}_fc', dtype=self.dtype,
                         kernel_init=KERAS_INIT))
      y = conv2d(y.astype(jnp.float32), 1, 1, name=f'branch{i}_out', dtype=jnp.float32,
                 kernel_init=KERAS_INIT)
      total = y if total is None else total + y
    return minmax_rescale(total) if self.rescale else total
