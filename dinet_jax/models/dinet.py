"""DINet: backbone + context module + decoder, composed from parts."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from dinet_jax.models.context import DilatedInception
from dinet_jax.models.decoder import ConvDecoder, upsample_bilinear
from dinet_jax.models.resnet import ResNet50


class DINet(nn.Module):
  """Saliency network: ``decoder(context(backbone(images)))`` upsampled to the input size.

  The parts are ordinary linen modules (``ResNet50``, ``DilatedInception``,
  ``ConvDecoder`` or alternatives with the same call signature ``(x, train)``), so an
  ablation swaps a part instead of copying the model; ``dinet_jax.models.create_model``
  builds them from a config; ``DINet()`` is the paper's model
  in float32. ``__call__`` maps NHWC torchvision-normalised images to
  (N, H, W, 1) float32 maps in [0, 1] at exactly the input's height and width.
  """

  backbone: nn.Module = dataclasses.field(default_factory=ResNet50)
  context: nn.Module | None = dataclasses.field(default_factory=DilatedInception)
  decoder: nn.Module = dataclasses.field(default_factory=ConvDecoder)

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    features = self.backbone(images, train=train)
    if self.context is not None:
      features = self.context(features, train=train)
    maps = self.decoder(features, train=train)
    maps = upsample_bilinear(maps.astype(jnp.float32), images.shape[1:3])
    return maps
