"""ResNet-50 v1.5 in the layout of torchvision, with optional dilation (output stride 8).

Parameter names follow torchvision's modules (``conv1``, ``bn1``, ``layer3_0/conv2``,
``layer3_0/downsample_conv`` ...), so converted ImageNet weights map one to one. Every
padding is explicit and equal to torchvision's: XLA's 'SAME' pads strided convolutions
asymmetrically, which shifts features and breaks weight parity.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from dinet_jax.models.batch_norm import BatchNorm
from dinet_jax.models.layers import conv2d
from dinet_jax.models.pooling import max_pool

Dtype = Any


class Bottleneck(nn.Module):
  """torchvision's Bottleneck: stride and dilation on the 3x3 convolution (v1.5)."""

  planes: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False
  dtype: Dtype = jnp.float32
  expansion: int = 4

  @nn.compact
  def __call__(self, x: jnp.ndarray, update_stats: bool = False) -> jnp.ndarray:
    bn = lambda name, **kw: BatchNorm(
        use_running_average=not update_stats, momentum=0.9, epsilon=1e-5,
        dtype=self.dtype, name=name, **kw)
    out = conv2d(x, self.planes, 1, name='conv1', dtype=self.dtype)
    out = nn.relu(bn('bn1')(out))
    out = conv2d(out, self.planes, 3, stride=self.stride, dilation=self.dilation,
                 name='conv2', dtype=self.dtype)
    out = nn.relu(bn('bn2')(out))
    out = conv2d(out, self.planes * self.expansion, 1, name='conv3',
                 dtype=self.dtype)
    out = bn('bn3')(out)
    identity = x
    if self.downsample:
      identity = conv2d(x, self.planes * self.expansion, 1, stride=self.stride,
                        name='downsample_conv', dtype=self.dtype)
      identity = bn('downsample_bn')(identity)
    return nn.relu(out + identity)


class ResNet(nn.Module):
  """torchvision ResNet with bottleneck blocks.

  Attributes:
    stage_sizes: blocks per stage; (3, 4, 6, 3) is ResNet-50.
    width: channels of the stem and the first stage's bottleneck (64 in ResNet-50); a
      smaller width gives the reduced models used for quick CPU runs.
    dilated: reproduce ``replace_stride_with_dilation=[False, True, True]``: stages 3
      and 4 keep stride 1 and dilate instead (output stride 8). False: output stride 32.
    train_bn: update BatchNorm statistics when called with ``train=True``. Default False:
      BatchNorm is frozen as in DINet.
    num_classes: if set, add torchvision's average pool + ``fc`` classifier head.
    return_stages: return a dict of intermediate outputs instead of the last map:
      ``'stem'`` (after the max pool, stride 4) and ``'layer1'`` .. ``'layer4'`` (and
      ``'logits'`` with ``num_classes``). For skip-layer networks; parameters unchanged.
    dtype: computation dtype; parameters stay float32.
  """

  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  dilated: bool = True
  train_bn: bool = False
  num_classes: int | None = None
  return_stages: bool = False
  dtype: Dtype = jnp.float32

  @property
  def out_features(self) -> int:
    return self.width * 8 * 4

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> Any:
    """Maps NHWC images (torchvision-normalised) to the last feature map (or logits;
    or the dict of stage outputs with ``return_stages``)."""
    update_stats = train and self.train_bn
    x = x.astype(self.dtype)
    x = conv2d(x, self.width, 7, stride=2, padding=3, name='conv1',
               dtype=self.dtype)
    x = BatchNorm(use_running_average=not update_stats, momentum=0.9, epsilon=1e-5,
                  dtype=self.dtype, name='bn1')(x)
    x = nn.relu(x)
    x = max_pool(x, window=3, stride=2, padding=1)
    stages = {'stem': x}

    replace_stride_with_dilation = (False, self.dilated, self.dilated)
    dilation = 1
    in_channels = self.width
    for stage, num_blocks in enumerate(self.stage_sizes):
      planes = self.width * 2**stage
      stride = 1 if stage == 0 else 2
      previous_dilation = dilation
      if stage > 0 and replace_stride_with_dilation[stage - 1]:
        dilation *= stride
        stride = 1
      for block in range(num_blocks):
        first = block == 0
        x = Bottleneck(
            planes=planes,
            stride=stride if first else 1,
            dilation=previous_dilation if first else dilation,
            downsample=first and (stride != 1 or in_channels != planes * 4),
            dtype=self.dtype,
            name=f'layer{stage + 1}_{block}',
        )(x, update_stats)
        in_channels = planes * 4
      stages[f'layer{stage + 1}'] = x

    if self.num_classes is not None:
      x = jnp.mean(x, axis=(1, 2))
      x = nn.Dense(self.num_classes, dtype=self.dtype, name='fc')(x)
      stages['logits'] = x
    return stages if self.return_stages else x


class ResNet50(ResNet):
  """ResNet-50 v1.5 (torchvision layout); ``dilated=True`` gives output stride 8."""
