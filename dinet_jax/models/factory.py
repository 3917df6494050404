"""Builds a ``DINet`` from an ``ml_collections`` model config.

Config fields (``config.model``), all optional:
  backbone: 'resnet50' (default).  backbone_width: 64 (ResNet-50), smaller for
  reduced models.  stage_sizes: (3, 4, 6, 3).  dilated: True (output stride 8).
  train_bn: False (frozen BatchNorm).
  context: 'dim' (default), 'baseline' (1x1 only) or 'none'.  context_features: 256.
  rates: (4, 8, 16).  fusion: 'sum' or 'concat'.
  decoder: 'conv'.  decoder_features: 256.  decoder_layers: 2.
  dtype: 'float32' (default) or 'bfloat16' (compute dtype; parameters stay float32).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

from dinet_jax.models.context import DilatedInception
from dinet_jax.models.decoder import ConvDecoder
from dinet_jax.models.dinet import DINet
from dinet_jax.models.resnet import ResNet50

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


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


def create_backbone(cfg: Any, dtype: Any) -> Any:
  name = _get(cfg, 'backbone', 'resnet50')
  if name != 'resnet50':
    raise ValueError(f"model.backbone must be 'resnet50', got {name!r}")
  return ResNet50(
      stage_sizes=tuple(_get(cfg, 'stage_sizes', (3, 4, 6, 3))),
      width=_get(cfg, 'backbone_width', 64),
      dilated=_get(cfg, 'dilated', True),
      train_bn=_get(cfg, 'train_bn', False),
      dtype=dtype)


def create_context(cfg: Any, dtype: Any) -> Any:
  name = _get(cfg, 'context', 'dim')
  features = _get(cfg, 'context_features', 256)
  if name == 'dim':
    return DilatedInception(features=features, rates=tuple(_get(cfg, 'rates', (4, 8, 16))),
                            fusion=_get(cfg, 'fusion', 'sum'), dtype=dtype)
  if name == 'baseline':
    return DilatedInception(features=features, rates=(), dtype=dtype)
  if name == 'none':
    return None
  raise ValueError(f"model.context must be one of 'dim', 'baseline', 'none'; got {name!r}")


def create_decoder(cfg: Any, dtype: Any) -> Any:
  name = _get(cfg, 'decoder', 'conv')
  if name != 'conv':
    raise ValueError(f"model.decoder must be 'conv', got {name!r}")
  return ConvDecoder(features=_get(cfg, 'decoder_features', 256),
                     num_layers=_get(cfg, 'decoder_layers', 2), dtype=dtype)


def create_model(cfg: Any = None) -> DINet:
  """A ``DINet`` from ``cfg`` (a config/dict with the fields above; None: the paper's)."""
  dtype = _dtype(_get(cfg, 'dtype', 'float32'))
  return DINet(backbone=create_backbone(cfg, dtype), context=create_context(cfg, dtype),
               decoder=create_decoder(cfg, dtype))
