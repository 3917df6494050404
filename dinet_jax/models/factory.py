"""Builds a DINet (or one of the paper's ablation variants) from a model config.

Config fields (``config.model``; a dict or an ``ml_collections.ConfigDict``), all
optional; the defaults give the paper's DINet:

  architecture: 'dinet' (default: backbone -> context -> decoder), 'pyramid' (image
    pyramid network, shared backbone over ``pyramid_scales``), 'skip' (skip-layer
    network over ``skip_stages``), 'two_decoders' (DINet + a second, linear decoder for
    the branch visualisation of Sec. IV-E; needs ``context='dim'``).
  backbone: 'resnet50'.  backbone_width: 64 (ResNet-50), smaller for reduced models.
    stage_sizes: (3, 4, 6, 3).  dilated: True (output stride 8; False: plain ResNet,
    stride 32).  train_bn: False (frozen BatchNorm).
  context: 'dim' (default; the DIM, Fig. 4(e), alias 'inception_e'), 'baseline' (the
    1x1 layer only), 'none' (backbone straight into the decoder), 'inception_a' ..
    'inception_d' (Fig. 4(a)-(d); (d) uses ``rates``), 'aspp_s', 'aspp_l' (Fig. 4(f)
    with rates (2, 4, 8, 12) / (6, 12, 18, 24)) or 'aspp' (with ``rates``). ASPP
    replaces the context module *and* the decoder (the decoder fields are then unused).
    context_features: 256 (filters of every context-module conv).  rates: (4, 8, 16)
    (DIM, 'inception_d', 'aspp').  fusion: 'sum' or 'concat' (DIM).
  decoder: 'conv' (``decoder_layers`` 3x3 convs + prediction conv) or 'deconv'
    (``decoder_layers`` 4x4 stride-2 transposed convs + prediction conv).
    decoder_features: 256.  decoder_layers: 2 (the paper's "3 conv layers" decoder).
  pyramid_scales: (1.0, 0.75, 0.5).  pyramid_merge: 'concat', 'sum' or 'max'.
  skip_stages: (2, 3, 4) (ResNet stages ``layer2`` .. ``layer4``).
  dtype: 'float32' (default) or 'bfloat16' (compute dtype; parameters stay float32).

``dinet_jax.variants`` names every variant of the paper's tables as a set of these fields.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from dinet_jax.models import inception
from dinet_jax.models.context import DilatedInception
from dinet_jax.models.decoder import ConvDecoder
from dinet_jax.models.deconv import DeconvDecoder
from dinet_jax.models.dinet import DINet
from dinet_jax.models.multiscale import ImagePyramidNet, SkipLayerNet
from dinet_jax.models.resnet import ResNet50

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
ARCHITECTURES = ('dinet', 'pyramid', 'skip', 'two_decoders')
CONTEXTS = ('dim', 'inception_e', 'baseline', 'none', 'inception_a', 'inception_b',
            'inception_c', 'inception_d', 'aspp_s', 'aspp_l', 'aspp')
DECODERS = ('conv', 'deconv')
_INCEPTIONS = {'inception_a': inception.inception_a, 'inception_b': inception.inception_b,
               'inception_c': inception.inception_c, 'inception_d': inception.inception_d}
_ASPP_RATES = {'aspp_s': inception.ASPP_S_RATES, 'aspp_l': inception.ASPP_L_RATES}


def _get(cfg: Mapping[str, Any] | Any, key: str, default: Any) -> Any:
  if cfg is None:
    return default
  if isinstance(cfg, Mapping):
    return cfg.get(key, default)
  return getattr(cfg, key, default) if hasattr(cfg, key) else default


def _dtype(name: str) -> Any:
  if name not in DTYPES:
    raise ValueError(f'model.dtype must be one of {sorted(DTYPES)}, got {name!r}')
  return DTYPES[name]


def _choice(cfg: Any, key: str, default: str, allowed: tuple[str, ...]) -> str:
  value = _get(cfg, key, default)
  if value not in allowed:
    raise ValueError(f'model.{key} must be one of {allowed}, got {value!r}')
  return value


def create_backbone(cfg: Any, dtype: Any, return_stages: bool = False) -> Any:
  _choice(cfg, 'backbone', 'resnet50', ('resnet50',))
  return ResNet50(
      stage_sizes=tuple(_get(cfg, 'stage_sizes', (3, 4, 6, 3))),
      width=_get(cfg, 'backbone_width', 64),
      dilated=_get(cfg, 'dilated', True),
      train_bn=_get(cfg, 'train_bn', False),
      return_stages=return_stages,
      dtype=dtype)


def is_aspp(cfg: Any) -> bool:
  return str(_get(cfg, 'context', 'dim')).startswith('aspp')


def create_context(cfg: Any, dtype: Any) -> nn.Module | None:
  """The module between backbone and decoder (None for 'none' and the ASPP heads)."""
  name = _choice(cfg, 'context', 'dim', CONTEXTS)
  features = _get(cfg, 'context_features', 256)
  rates = tuple(_get(cfg, 'rates', (4, 8, 16)))
  if name in ('dim', 'inception_e'):
    return DilatedInception(features=features, rates=rates,
                            fusion=_get(cfg, 'fusion', 'sum'), dtype=dtype)
  if name == 'baseline':
    return DilatedInception(features=features, rates=(), dtype=dtype)
  if name == 'inception_d':  # the non-bottleneck DIM: reads ``rates`` like the DIM
    return inception.InceptionModule(
        features, (3,) * len(rates), rates, conv1x1_branch=False, pool_branch=False,
        dtype=dtype)
  if name in _INCEPTIONS:
    return _INCEPTIONS[name](features, dtype)
  return None  # 'none', or an ASPP head that replaces context and decoder


def create_decoder(cfg: Any, dtype: Any) -> nn.Module:
  if is_aspp(cfg):
    name = _get(cfg, 'context', 'dim')
    rates = _ASPP_RATES.get(name) or tuple(_get(cfg, 'rates', (4, 8, 16)))
    return inception.ASPP(features=_get(cfg, 'context_features', 256), rates=rates,
                          dtype=dtype)
  name = _choice(cfg, 'decoder', 'conv', DECODERS)
  kwargs = dict(features=_get(cfg, 'decoder_features', 256),
                num_layers=_get(cfg, 'decoder_layers', 2), dtype=dtype)
  return ConvDecoder(**kwargs) if name == 'conv' else DeconvDecoder(**kwargs)


def create_model(cfg: Any = None) -> nn.Module:
  """The model of ``cfg`` (a config/dict with the fields above; None: the paper's DINet).

  Every variant maps NHWC torchvision-normalised images to (N, H, W, 1) maps at the
  input size; 'two_decoders' returns ``(main, linear)`` maps when called with
  ``train=True``.
  """
  dtype = _dtype(_get(cfg, 'dtype', 'float32'))
  architecture = _choice(cfg, 'architecture', 'dinet', ARCHITECTURES)
  context, decoder = create_context(cfg, dtype), create_decoder(cfg, dtype)
  if architecture == 'pyramid':
    return ImagePyramidNet(
        backbone=create_backbone(cfg, dtype), context=context, decoder=decoder,
        scales=tuple(_get(cfg, 'pyramid_scales', (1.0, 0.75, 0.5))),
        merge=_get(cfg, 'pyramid_merge', 'concat'))
  if architecture == 'skip':
    stages = tuple(f'layer{int(s)}' for s in _get(cfg, 'skip_stages', (2, 3, 4)))
    return SkipLayerNet(backbone=create_backbone(cfg, dtype, return_stages=True),
                        context=context, decoder=decoder, stages=stages)
  if architecture == 'two_decoders':
    from dinet_jax.models.branch_vis import BranchDIM, LinearDecoder, TwoDecoderDINet

    if not isinstance(context, DilatedInception) or not context.rates \
        or context.fusion != 'sum':
      raise ValueError("architecture='two_decoders' needs context='dim' with sum fusion "
                       'and at least one branch')
    if not isinstance(decoder, ConvDecoder):
      raise ValueError("architecture='two_decoders' needs decoder='conv'")
    return TwoDecoderDINet(
        backbone=create_backbone(cfg, dtype),
        context=BranchDIM(features=context.features, rates=context.rates, dtype=dtype),
        decoder=decoder,
        linear_decoder=LinearDecoder(features=decoder.features,
                                     num_layers=decoder.num_layers, dtype=dtype))
  return DINet(backbone=create_backbone(cfg, dtype), context=context, decoder=decoder)
