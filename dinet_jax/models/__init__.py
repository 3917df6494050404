"""DINet model parts (linen modules) and the config-driven factory."""

from dinet_jax.models.context import DilatedInception, baseline_context
from dinet_jax.models.decoder import ConvDecoder, upsample_bilinear
from dinet_jax.models.dinet import DINet
from dinet_jax.models.factory import create_model
from dinet_jax.models.resnet import Bottleneck, ResNet, ResNet50

__all__ = [
    'Bottleneck', 'ConvDecoder', 'DINet', 'DilatedInception', 'ResNet', 'ResNet50',
    'baseline_context', 'create_model', 'upsample_bilinear',
]
