"""DINet with a second, linear decoder: the branch visualisation of Sec. IV-E / Table VI.

"This visualization experiment is realized by adding an additional decoder network
without non-linear activation at the end of our DIM. Both of this additional decoder and
the original decoder are jointly trained with the same loss and the same inputs from the
DIM." Because the second decoder is linear (bias-free convolutions, no activation, then
bilinear upsampling, itself linear), decoding the sum-fused DIM output equals the sum of
decoding each branch alone, so each branch (or pair of branches) can be shown and
evaluated on its own.

``TwoDecoderDINet`` returns ``(main, linear)`` when called with ``train=True``
(``dinet_jax.steps.train_step`` sums the loss over both) and only the main map otherwise,
so evaluation and inference see a plain DINet. Its parameter tree is DINet's
(``backbone``, ``context`` with ``reduce`` / ``branch{i}``, ``decoder``) plus
``linear_decoder``, so a DINet checkpoint's parts load into it unchanged.

The linear map is not confined to [0, 1] (nor to non-negative values). Decisions where the
paper is silent: the linear decoder mirrors the main decoder's layout (``num_layers``
3x3 convs of ``features`` filters, then a 3x3 conv to one channel), and its gradient
reaches the DIM and backbone (jointly trained, nothing stopped).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from dinet_jax.models.decoder import ConvDecoder, upsample_bilinear
from dinet_jax.models.layers import KERAS_INIT, conv2d
from dinet_jax.models.resnet import ResNet50

Dtype = Any


class BranchDIM(nn.Module):
  """``DilatedInception`` (sum fusion) that can also return its branches one by one.

  Same fields and parameter names (``reduce``, ``branch0`` ..) as
  ``dinet_jax.models.context.DilatedInception``; ``__call__`` gives the same output.
  """

  features: int = 256
  rates: Sequence[int] = (4, 8, 16)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False,
               return_branches: bool = False) -> Any:
    del train
    x = nn.relu(conv2d(x, self.features, 1, name='reduce', dtype=self.dtype,
                       kernel_init=KERAS_INIT))
    branches = [
        nn.relu(conv2d(x, self.features, 3, dilation=rate, name=f'branch{i}',
                       dtype=self.dtype, kernel_init=KERAS_INIT))
        for i, rate in enumerate(self.rates)
    ]
    if return_branches:
      return branches
    return sum(branches[1:], branches[0])


class LinearDecoder(nn.Module):
  """The main decoder's layout without any activation: a linear map of its input."""

  features: int = 256
  num_layers: int = 2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train
    for i in range(self.num_layers):
      x = conv2d(x, self.features, 3, name=f'conv{i}', dtype=self.dtype,
                 kernel_init=KERAS_INIT)
    return conv2d(x.astype(jnp.float32), 1, 3, name='out', dtype=jnp.float32,
                  kernel_init=KERAS_INIT)


def subset_name(subset: Iterable[int], rates: Sequence[int] | None = None) -> str:
  """'b0+b2' (or with rates: 'r4+r16') for a tuple of branch indices."""
  if rates is None:
    return '+'.join(f'b{i}' for i in subset)
  return '+'.join(f'r{rates[i]}' for i in subset)


def all_subsets(num_branches: int) -> list[tuple[int, ...]]:
  """Every non-empty subset of the branches: singles, then pairs, ..., then all."""
  from itertools import combinations

  return [c for k in range(1, num_branches + 1) for c in combinations(range(num_branches), k)]


class TwoDecoderDINet(nn.Module):
  """DINet + a linear second decoder, both reading the DIM's sum-fused features."""

  backbone: nn.Module = dataclasses.field(default_factory=ResNet50)
  context: BranchDIM = dataclasses.field(default_factory=BranchDIM)
  decoder: nn.Module = dataclasses.field(default_factory=ConvDecoder)
  linear_decoder: LinearDecoder = dataclasses.field(default_factory=LinearDecoder)

  def _up(self, maps: jnp.ndarray, images: jnp.ndarray) -> jnp.ndarray:
    return upsample_bilinear(maps.astype(jnp.float32), images.shape[1:3])

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool = False) -> Any:
    features = self.context(self.backbone(images, train=train), train=train)
    main = self._up(self.decoder(features, train=train), images)
    if not train and not self.is_initializing():
      return main
    return main, self._up(self.linear_decoder(features, train=train), images)

  def branches(self, images: jnp.ndarray) -> list[jnp.ndarray]:
    """The DIM's branch outputs (inference mode), each (N, h, w, features)."""
    return self.context(self.backbone(images, train=False), return_branches=True)

  def decode_subsets(self, images: jnp.ndarray,
                     subsets: Sequence[Sequence[int]] | None = None,
                     decoder: str = 'linear') -> dict[tuple[int, ...], jnp.ndarray]:
    """Maps decoded from the sum of each subset of branches (default: every subset).

    ``decoder='linear'`` uses the second decoder (Fig. 5, Table VI); ``'main'`` feeds the
    same branch sums to the original decoder (sigmoid output). Returns
    ``{subset: (N, H, W, 1) float32}``; the full set through ``'main'`` is the DINet map.
    """
    if decoder not in ('linear', 'main'):
      raise ValueError(f"decoder must be 'linear' or 'main', got {decoder!r}")
    branches = self.branches(images)
    if subsets is None:
      subsets = all_subsets(len(branches))
    head = self.linear_decoder if decoder == 'linear' else self.decoder
    out = {}
    for subset in subsets:
      subset = tuple(int(i) for i in subset)
      if not subset:
        raise ValueError('a branch subset must not be empty')
      fused = sum((branches[i] for i in subset[1:]), branches[subset[0]])
      out[subset] = self._up(head(fused), images)
    return out
