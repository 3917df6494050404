"""The paper's ablation variants on the default (reduced, saliency_popout) set-up.

    python train.py --workdir runs/aspp_s --config=configs/variants.py:aspp_s
    python train.py --workdir runs/dim_gamma --config=configs/variants.py:dim_gamma
    python train.py --workdir runs/dim_r16 --config=configs/variants.py:dinet \
        --config.model.rates='(16,)'

The argument after ':' is a variant name of ``dinet_jax.variants`` (list them with
``python -m dinet_jax.variants``); everything but the model structure is
``configs/default.py``'s, including the DIM rates (2, 4, 8) [alpha, beta, gamma] of the
12x16 feature map (``dim_gamma`` is then the rate-8 branch alone). The model fields can
be overridden as usual.
"""

import importlib.util
import os

from dinet_jax.variants import variant_config


def _default():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'default.py')
  spec = importlib.util.spec_from_file_location('dinet_jax_configs_default', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(variant: str = 'dinet'):
  config = _default().get_config()
  config.model = variant_config(variant, config.model)
  return config
