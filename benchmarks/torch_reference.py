"""DINet in PyTorch: the reference the Flax model is checked and benchmarked against.

The backbone is ``torchvision.models.resnet50(replace_stride_with_dilation=[False, True,
True])`` (output stride 8) without its classifier; the dilated inception module (DIM) and
the decoder follow ``dinet_jax.models`` exactly: no biases, no BatchNorm outside the
backbone, ReLU after each convolution, the DIM's branches summed (or concatenated), a
sigmoid on the one-channel map and bilinear upsampling (``align_corners=False``) to the
input size. Module names mirror the Flax parameter names, so

    dinet_jax.convert.torch_dinet_to_flax(TorchDINet().state_dict())

gives the variables of ``dinet_jax.models.DINet()`` (``backbone.layer3.0.downsample.1`` ->
``backbone/layer3_0/downsample_bn`` and so on).

Importing this file needs only torch and torchvision, not JAX.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


class DilatedInception(nn.Module):
  """1x1 reduction (+ReLU), parallel dilated 3x3 convolutions (+ReLU), summed."""

  def __init__(self, in_channels: int = 2048, features: int = 256,
               rates: Sequence[int] = (4, 8, 16), fusion: str = 'sum'):
    super().__init__()
    if fusion not in ('sum', 'concat'):
      raise ValueError(f"fusion must be 'sum' or 'concat', got {fusion!r}")
    self.rates, self.fusion = tuple(rates), fusion
    self.reduce = nn.Conv2d(in_channels, features, 1, bias=False)
    for i, rate in enumerate(self.rates):
      setattr(self, f'branch{i}',
              nn.Conv2d(features, features, 3, padding=rate, dilation=rate, bias=False))

  @property
  def out_channels(self) -> int:
    n = self.reduce.out_channels
    return n * len(self.rates) if (self.fusion == 'concat' and self.rates) else n

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.reduce(x))
    if not self.rates:
      return x
    branches = [F.relu(getattr(self, f'branch{i}')(x)) for i in range(len(self.rates))]
    if self.fusion == 'sum':
      out = branches[0]
      for b in branches[1:]:
        out = out + b
      return out
    return torch.cat(branches, dim=1)


class ConvDecoder(nn.Module):
  """``num_layers`` 3x3 convolutions (+ReLU), a 3x3 convolution to one channel, sigmoid."""

  def __init__(self, in_channels: int = 256, features: int = 256, num_layers: int = 2):
    super().__init__()
    self.num_layers = num_layers
    c = in_channels
    for i in range(num_layers):
      setattr(self, f'conv{i}', nn.Conv2d(c, features, 3, padding=1, bias=False))
      c = features
    self.out = nn.Conv2d(c, 1, 3, padding=1, bias=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for i in range(self.num_layers):
      x = F.relu(getattr(self, f'conv{i}')(x))
    return torch.sigmoid(self.out(x))


class TorchDINet(nn.Module):
  """DINet: dilated ResNet-50 -> DIM -> decoder -> bilinear upsampling, NCHW in and out.

  ``forward`` maps (N, 3, H, W) torchvision-normalised images to (N, 1, H, W) maps in
  [0, 1]. ``rates=()`` is the paper's baseline (1x1 context only). BatchNorm is used in
  inference mode when the module is in ``eval()`` mode; DINet trains with frozen
  BatchNorm, so keep the backbone's BatchNorm layers in eval mode when training
  (``freeze_bn()``).
  """

  def __init__(self, context_features: int = 256, rates: Sequence[int] = (4, 8, 16),
               fusion: str = 'sum', decoder_features: int = 256, decoder_layers: int = 2):
    super().__init__()
    backbone = torchvision.models.resnet50(
        weights=None, replace_stride_with_dilation=[False, True, True])
    backbone.fc = nn.Identity()  # No classifier; avgpool is never called.
    self.backbone = backbone
    self.context = DilatedInception(2048, context_features, rates, fusion)
    self.decoder = ConvDecoder(self.context.out_channels, decoder_features, decoder_layers)

  def features(self, x: torch.Tensor) -> torch.Tensor:
    b = self.backbone
    x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
    return b.layer4(b.layer3(b.layer2(b.layer1(x))))

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    maps = self.decoder(self.context(self.features(images)))
    return F.interpolate(maps, size=images.shape[-2:], mode='bilinear', align_corners=False)

  def freeze_bn(self) -> 'TorchDINet':
    """BatchNorm layers to eval mode (running statistics used and not updated)."""
    for m in self.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.eval()
    return self


def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
  """Random weights of realistic scale for parity tests and benchmarks.

  BatchNorm affine parameters and statistics are drawn with scales below 1, so the
  backbone's activations stay at a trained network's magnitude and 1e-4 tolerances test
  the layout rather than float32 rounding of huge values. The DIM's and decoder's
  convolutions (torch's default init makes them nearly zero, every map ~0.5) get He
  normal weights, and the last one a gain that spreads the logits over about [-3, 3],
  so the maps vary and a comparison of them is not vacuous.
  """
  g = torch.Generator().manual_seed(seed)
  u = lambda t, lo, hi: t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, nn.BatchNorm2d):
        u(m.weight, 0.4, 1.0)
        u(m.bias, -0.2, 0.2)
        u(m.running_mean, -0.2, 0.2)
        u(m.running_var, 0.5, 2.0)
    for name, m in net.named_modules():
      if isinstance(m, nn.Conv2d) and name.split('.')[0] in ('context', 'decoder'):
        std = (5.0 if name == 'decoder.out' else 2.0 ** 0.5) / m.weight[0].numel() ** 0.5
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std)
  return net


def tvd_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
  """Total variation distance between per-sample linearly normalised maps, batch mean:
  ``0.5 * sum |P - Q|`` with ``P = p / (sum p + eps)``."""
  p = pred.flatten(1)
  q = target.flatten(1)
  p = p / (p.sum(1, keepdim=True) + eps)
  q = q / (q.sum(1, keepdim=True) + eps)
  return (0.5 * (p - q).abs().sum(1)).mean()
