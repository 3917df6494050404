"""Whole-network multi-scale alternatives of Table II / Fig. 1: the image pyramid
network (IPN) with a shared backbone and the skip-layer network.

Both keep DINet's parts (``backbone``, ``context``, ``decoder``, same parameter names
below them) and only change how features reach the context module, so any context
module and decoder of the factory can be combined with them. Decisions where the paper
is silent:

* IPN: the one backbone (shared weights) reads the image at each of ``scales`` (default
  1, 0.75, 0.5 as in DeepLab's multi-scale inputs; images resized bilinearly with
  antialiasing); each feature map is resized bilinearly to the feature size of the first
  scale and the maps are merged ("merged and fed into the following decoder network")
  by concatenation (default; the 1x1 baseline layer then reads 3 x 2048 channels: +16W),
  ``'sum'`` or ``'max'``. The merged features go through the context module (the
  baseline 1x1 layer in Table II's "baseline + IPN") and the decoder.
* Skip-layer network: the outputs of ``stages`` (default ``layer2``, ``layer3``,
  ``layer4`` of the ResNet, i.e. conv3_x .. conv5_x at strides 8, 16, 32 with the plain
  backbone) are upsampled bilinearly to the size of the first one and concatenated
  ("direct up-sampling and concatenating ... without feature adaptation"; 512 + 1024 +
  2048 channels), then context module and decoder as above. Meant for the plain ResNet
  (output stride 32), where the stages differ in resolution; with the dilated backbone
  they share stride 8 and no upsampling happens.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dinet_jax.models.context import DilatedInception
from dinet_jax.models.decoder import ConvDecoder, upsample_bilinear
from dinet_jax.models.resnet import ResNet50


def _resize(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
  if tuple(x.shape[1:3]) == tuple(size):
    return x
  return jax.image.resize(x, (x.shape[0], size[0], size[1], x.shape[3]), method='bilinear')


def _head(module: nn.Module, features: jnp.ndarray, images: jnp.ndarray,
          train: bool) -> jnp.ndarray:
  if module.context is not None:
    features = module.context(features, train=train)
  maps = module.decoder(features, train=train)
  return upsample_bilinear(maps.astype(jnp.float32), images.shape[1:3])


class ImagePyramidNet(nn.Module):
  """IPN: a shared backbone over several input scales, merged features, one decoder."""

  backbone: nn.Module = dataclasses.field(default_factory=ResNet50)
  context: nn.Module | None = dataclasses.field(
      default_factory=lambda: DilatedInception(rates=()))
  decoder: nn.Module = dataclasses.field(default_factory=ConvDecoder)
  scales: Sequence[float] = (1.0, 0.75, 0.5)
  merge: str = 'concat'

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    if self.merge not in ('concat', 'sum', 'max'):
      raise ValueError(f"merge must be 'concat', 'sum' or 'max', got {self.merge!r}")
    n, h, w, c = images.shape
    feats = []
    for scale in self.scales:
      size = (max(1, round(h * scale)), max(1, round(w * scale)))
      x = _resize(images, size) if size != (h, w) else images
      f = self.backbone(x, train=train)
      feats.append(_resize(f, feats[0].shape[1:3]) if feats else f)
    if self.merge == 'concat':
      merged = jnp.concatenate(feats, axis=-1)
    elif self.merge == 'sum':
      merged = sum(feats[1:], feats[0])
    else:
      merged = feats[0]
      for f in feats[1:]:
        merged = jnp.maximum(merged, f)
    return _head(self, merged, images, train)


class SkipLayerNet(nn.Module):
  """Skip-layer network: upsampled, concatenated outputs of several backbone stages.

  ``backbone`` must return its stage outputs (``ResNet(return_stages=True)``).
  """

  backbone: nn.Module = dataclasses.field(
      default_factory=lambda: ResNet50(dilated=False, return_stages=True))
  context: nn.Module | None = dataclasses.field(
      default_factory=lambda: DilatedInception(rates=()))
  decoder: nn.Module = dataclasses.field(default_factory=ConvDecoder)
  stages: Sequence[str] = ('layer2', 'layer3', 'layer4')

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    outputs = self.backbone(images, train=train)
    if not isinstance(outputs, dict):
      raise ValueError('SkipLayerNet needs a backbone with return_stages=True')
    size = outputs[self.stages[0]].shape[1:3]
    merged = jnp.concatenate([_resize(outputs[s], size) for s in self.stages], axis=-1)
    return _head(self, merged, images, train)
