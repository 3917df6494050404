"""The paper's ablation variants (Tables II, V, VII; Sec. IV-E) as model configs.

Every variant is a set of ``config.model`` fields of ``dinet_jax.models.create_model``
(see ``dinet_jax/models/factory.py``), applied on top of a base model config (the
paper's full-size model, or e.g. the reduced model of ``configs/default.py``), so a
variant is trained like any model:
``python train.py --workdir runs/aspp_s --config=configs/variants.py:aspp_s``.

    python -m dinet_jax.variants --table [--markdown] [--base paper|default]

prints every variant's trainable parameter count and its extra parameters relative to
the baseline (DRN + 1x1 layer + decoder), in parameters, in W = 256 * 256, and in percent
(the paper's "Extra params (%)"), computed with ``jax.eval_shape`` (nothing is compiled
or allocated).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Mapping

W = 256 * 256

# The structural fields every variant sets; other fields (widths, dtype, and the DIM's
# dilation rates [alpha, beta, gamma]) come from the base.
STRUCTURE = dict(architecture='dinet', dilated=True, context='dim', fusion='sum',
                 decoder='conv', decoder_layers=2, pyramid_scales=(1.0, 0.75, 0.5),
                 pyramid_merge='concat', skip_stages=(2, 3, 4))
PAPER_RATES = (4, 8, 16)
GREEK = ('alpha', 'beta', 'gamma')

@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  group: str
  description: str
  overrides: Mapping[str, Any]

  @property
  def fields(self) -> dict[str, Any]:
    return {**STRUCTURE, **self.overrides}


def _v(name, group, description, **overrides) -> Variant:
  return Variant(name, group, description, overrides)


_B = dict(context='baseline')
VARIANTS: dict[str, Variant] = {v.name: v for v in [
    # Table V, part 1: backbone.
    _v('baseline', 'backbone', 'DRN (dilated ResNet-50, stride 8) + 1x1 layer + decoder', **_B),
    _v('plain_baseline', 'backbone', 'plain ResNet-50 (stride 32) + 1x1 layer + decoder',
       dilated=False, **_B),
    # Table V, part 2: decoders on the baseline (n conv layers incl. the prediction layer).
    _v('decoder_1conv', 'decoder', 'baseline, decoder: prediction conv only',
       decoder_layers=0, **_B),
    _v('decoder_2conv', 'decoder', 'baseline, decoder: 1 conv + prediction conv',
       decoder_layers=1, **_B),
    _v('decoder_4conv', 'decoder', 'baseline, decoder: 3 convs + prediction conv',
       decoder_layers=3, **_B),
    _v('decoder_5conv', 'decoder', 'baseline, decoder: 4 convs + prediction conv',
       decoder_layers=4, **_B),
    _v('decoder_1deconv', 'decoder', 'baseline, decoder: 1 deconv (x2) + prediction conv',
       decoder='deconv', decoder_layers=1, **_B),
    _v('decoder_2deconv', 'decoder', 'baseline, decoder: 2 deconvs (x4) + prediction conv',
       decoder='deconv', decoder_layers=2, **_B),
    _v('decoder_3deconv', 'decoder', 'baseline, decoder: 3 deconvs (x8) + prediction conv',
       decoder='deconv', decoder_layers=3, **_B),
    # Table II / Table V, part 3: multi-scale context modules and networks.
    _v('no_context', 'multi-scale', 'DRN + decoder (no 1x1 layer)', context='none'),
    _v('inception_a', 'multi-scale', 'baseline + inception (a): GoogLeNet module, concat',
       context='inception_a'),
    _v('inception_b', 'multi-scale', 'baseline + inception (b): 3x3, 5x5, 7x7, concat',
       context='inception_b'),
    _v('inception_c', 'multi-scale', 'baseline + inception (c): 3x3 dilated 1, 2, 3, concat',
       context='inception_c'),
    _v('inception_d', 'multi-scale', 'baseline + inception (d): 3x3 at the DIM rates, concat',
       context='inception_d'),
    _v('dinet', 'multi-scale', 'baseline + inception (e) = DIM: DINet', context='dim'),
    _v('aspp_s', 'multi-scale', 'DRN + ASPP-S, replaces DIM + decoder',
       context='aspp_s'),
    _v('aspp_l', 'multi-scale', 'DRN + ASPP-L, replaces DIM + decoder',
       context='aspp_l'),
    _v('pyramid', 'multi-scale', 'baseline + image pyramid (scales 1, 0.75, 0.5, shared DRN)',
       architecture='pyramid', **_B),
    _v('skip', 'multi-scale', 'plain ResNet + skip layers (conv3-conv5 concat) + 1x1 + decoder',
       architecture='skip', dilated=False, **_B),
    _v('plain_dinet', 'multi-scale', 'plain ResNet (stride 32) + DIM + decoder', dilated=False),
    # Table VII: DIM with 0-3 branches, sum vs concatenation. Branches are chosen among
    # the base's rates [alpha, beta, gamma] ((4, 8, 16) in the paper).
    _v('dim_alpha', 'dim-branches', 'DIM with 1 branch: alpha',
       branches=(0,)),
    _v('dim_beta', 'dim-branches', 'DIM with 1 branch: beta', branches=(1,)),
    _v('dim_gamma', 'dim-branches', 'DIM with 1 branch: gamma', branches=(2,)),
    _v('dim_alpha_beta', 'dim-branches', 'DIM with 2 branches: alpha + beta, sum',
       branches=(0, 1)),
    _v('dim_alpha_gamma', 'dim-branches', 'DIM with 2 branches: alpha + gamma, sum',
       branches=(0, 2)),
    _v('dim_beta_gamma', 'dim-branches', 'DIM with 2 branches: beta + gamma, sum',
       branches=(1, 2)),
    _v('dim_concat', 'dim-branches', 'DIM with 3 branches, concatenation', fusion='concat'),
    # Sec. IV-E / Table VI.
    _v('two_decoders', 'visualisation', 'DINet + second, linear decoder (training only)',
       architecture='two_decoders'),
]}


def variant_config(name: str, base: Any = None) -> Any:
  """The model config of variant ``name``: ``base`` (dict or ConfigDict; None: the
  paper's full-size model) with the variant's structural fields set.

  The DIM rates stay the base's (the paper's (4, 8, 16) if it has none); the Table VII
  variants keep a subset of them (``dim_gamma``: the third rate only).
  """
  if name not in VARIANTS:
    raise ValueError(f'unknown variant {name!r}; one of {sorted(VARIANTS)}')
  from dinet_jax.models.factory import _get

  fields = dict(VARIANTS[name].fields)
  rates = tuple(_get(base, 'rates', PAPER_RATES))
  branches = fields.pop('branches', None)
  if branches is not None:
    if max(branches) >= len(rates):
      raise ValueError(f'variant {name!r} needs {max(branches) + 1} base rates, got {rates}')
    rates = tuple(rates[i] for i in branches)
  fields['rates'] = rates
  if base is None:
    return fields
  if isinstance(base, Mapping):
    return {**base, **fields}
  import ml_collections

  cfg = ml_collections.ConfigDict(base.to_dict())
  for key, value in fields.items():
    cfg[key] = value
  return cfg


def base_model_config(base: str) -> Any:
  """'paper': the full-size model (None); 'default': ``configs/default.py``'s model."""
  if base == 'paper':
    return None
  if base == 'default':
    return load_default_config().model
  raise ValueError(f"base must be 'paper' or 'default', got {base!r}")


def load_default_config() -> Any:
  """``configs/default.py``'s ``get_config()`` (loaded by path: configs/ is no package)."""
  import importlib.util
  import pathlib

  path = pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'default.py'
  spec = importlib.util.spec_from_file_location('dinet_jax_configs_default', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def count_params(model_cfg: Any, image_size: tuple[int, int] = (240, 320)) -> int:
  """Trainable parameters (the ``params`` collection) of a model config, via eval_shape."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from dinet_jax.models import create_model

  model = create_model(model_cfg)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, *image_size, 3), jnp.float32))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes['params']))


def parameter_table(base: Any = None, names: list[str] | None = None) -> list[dict[str, Any]]:
  """One row per variant: name, group, description, rates, params, extra (abs, in W, %).

  W is the size of a 1x1 convolution ``context_features -> context_features`` (256 * 256
  in the paper's model).
  """
  names = list(VARIANTS) if names is None else names
  reference = count_params(variant_config('baseline', base))
  from dinet_jax.models.factory import _get

  w = _get(base, 'context_features', 256) ** 2
  rows = []
  for name in names:
    v = VARIANTS[name]
    cfg = variant_config(name, base)
    n = count_params(cfg)
    rows.append(dict(name=name, group=v.group, description=v.description, params=n,
                     rates=dilation_rates(cfg),
                     extra=n - reference, extra_w=(n - reference) / w,
                     extra_percent=100.0 * (n - reference) / reference))
  return rows


def dilation_rates(model_cfg: Any) -> tuple[int, ...]:
  """The dilation rates of a variant's parallel branches (empty when it has none)."""
  from dinet_jax.models import inception
  from dinet_jax.models.factory import _get

  context = _get(model_cfg, 'context', 'dim')
  if context in ('aspp_s', 'aspp_l'):
    return inception.ASPP_S_RATES if context == 'aspp_s' else inception.ASPP_L_RATES
  if context == 'inception_c':
    return (1, 2, 3)
  if context in ('dim', 'inception_e', 'inception_d', 'aspp'):
    return tuple(_get(model_cfg, 'rates', PAPER_RATES))
  return ()


def format_table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
  header = ['variant', 'group', 'rates', 'params', 'extra params', 'extra (W)', 'extra (%)',
            'description']
  body = [[r['name'], r['group'], ','.join(map(str, r['rates'])) or '-', f"{r['params']:,}",
           f"{r['extra']:+,}", f"{r['extra_w']:+.2f}", f"{r['extra_percent']:+.2f}",
           r['description']] for r in rows]
  if markdown:
    lines = ['| ' + ' | '.join(header) + ' |',
             '|' + '|'.join(['---', '---', '---', '---:', '---:', '---:', '---:', '---']) + '|']
    lines += ['| ' + ' | '.join(f'`{c}`' if i == 0 else c for i, c in enumerate(row)) + ' |'
              for row in body]
    return '\n'.join(lines)
  widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
  fmt = lambda row: '  '.join(
      str(c).rjust(w) if 3 <= i <= 6 else str(c).ljust(w)
      for i, (c, w) in enumerate(zip(row, widths))).rstrip()
  return '\n'.join([fmt(header)] + [fmt(row) for row in body])


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--table', action='store_true',
                      help='print the parameter table of every variant')
  parser.add_argument('--markdown', action='store_true', help='as a markdown table')
  parser.add_argument('--base', default='paper', choices=('paper', 'default'),
                      help="widths: the paper's full model or configs/default.py's")
  parser.add_argument('--variants', nargs='*', help='only these variants')
  args = parser.parse_args(argv)
  if not args.table:
    for v in VARIANTS.values():
      print(f'{v.name:16s} {v.group:14s} {v.description}')
    return 0
  import os

  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  rows = parameter_table(base_model_config(args.base), args.variants)
  print(format_table(rows, markdown=args.markdown))
  return 0


if __name__ == '__main__':
  sys.exit(main())
