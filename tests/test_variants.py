"""The paper's ablation variants: parameter counts that follow from the paper's text,
output shapes of every variant, ASPP's rescaling, and the parameter-table command."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinet_jax import variants
from dinet_jax.models import create_model
from dinet_jax.models.deconv import DeconvDecoder
from dinet_jax.models.inception import ASPP, InceptionModule, minmax_rescale
from dinet_jax.models.resnet import ResNet50

W = 256 * 256
# A reduced model: abstract shapes and real runs stay fast on CPU.
SMALL = dict(backbone_width=8, stage_sizes=(1, 1, 1, 1), context_features=16,
             decoder_features=16)


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def params(cfg, hw=(240, 320)):
  model = create_model(cfg)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *hw, 3)))['params']


def random_variables(model, x, seed=0):
  """He-normal kernels, identity BatchNorm: like ``model.init`` without compiling its RNG
  (jitting ``init`` costs far more than the model on CPU)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if 'kernel' in name:
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0, np.sqrt(2 / fan_in), leaf.shape), leaf.dtype)
    return jnp.full(leaf.shape, 1.0 if ('scale' in name or 'var' in name) else 0.0, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def full(name):
  return params(variants.variant_config(name))


def test_dim_adds_27_w_over_the_baseline():
  assert count(full('dinet')) - count(full('baseline')) == 27 * W


def test_dilated_parts_of_aspp_and_dim_are_288_w_and_35_w():
  # "the difference between the dilated convolutions part of ASPP and our DIM in
  # #parameters is 8 x 3^2 x 4 = 288W versus 8 + 3^2 x 3 = 35W".
  for name in ('aspp_s', 'aspp_l'):
    head = full(name)['decoder']
    assert count([head[f'branch{i}_conv'] for i in range(4)]) == 288 * W
  assert count(full('dinet')['context']) == 35 * W


def test_inception_modules_match_the_papers_differences():
  a, b, c, d = (count(full(f'inception_{x}')) for x in 'abcd')
  # "7 x 7 convolutional layer in inception module (b) has 7^2 W = 49W parameters"
  assert count(full('inception_b')['context']['branch2']) == 49 * W
  # "needs an additional 32W parameters compared to the original inception model"
  assert b - a == 32 * W
  # (c): "(7^2 + 5^2 - 2 x 3^2)W = 56W parameters less"
  assert b - c == 56 * W
  assert c == d  # (d) only changes the rates


def test_dim_branch_count_and_fusion():
  base, dinet = count(full('baseline')), count(full('dinet'))
  for name, branches in [('dim_alpha', 1), ('dim_gamma', 1), ('dim_alpha_beta', 2),
                         ('dim_beta_gamma', 2)]:
    assert count(full(name)) - base == 9 * branches * W
  # Concatenation widens the decoder's first 3x3 conv from 256 to 768 inputs: +18W.
  assert count(full('dim_concat')) - dinet == 18 * W
  assert full('dim_concat')['decoder']['conv0']['kernel'].shape == (3, 3, 768, 256)


def test_decisions_for_pyramid_skip_and_deconv_counts():
  base = count(full('baseline'))
  # IPN: the 1x1 layer reads 3 x 2048 concatenated channels (+2 x 8W).
  assert count(full('pyramid')) - base == 16 * W
  # Skip-layer: 512 + 1024 + 2048 channels into the 1x1 layer (+6W); same backbone.
  assert count(full('skip')) - base == 6 * W
  assert count(full('skip')['backbone']) == count(full('baseline')['backbone'])
  # Two 4x4 deconvolutions (2 x 16W) replace two 3x3 convolutions (2 x 9W).
  assert count(full('decoder_2deconv')) - base == 14 * W
  assert count(full('no_context')) - base == 55 * W  # decoder reads 2048: 72W - 8W - 9W


def test_plain_backbone_has_the_same_parameters():
  assert count(full('plain_baseline')) == count(full('baseline')) == 25_214_272


@pytest.mark.parametrize('name', list(variants.VARIANTS))
def test_every_variant_is_input_sized_at_odd_sizes(name):
  model = create_model(variants.variant_config(name, SMALL))
  for hw in [(97, 131)]:
    x = jnp.zeros((2, *hw, 3))
    v = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    out = jax.eval_shape(lambda v, x: model.apply(v, x), v, x)
    assert out.shape == (2, *hw, 1) and out.dtype == jnp.float32
    train_out = jax.eval_shape(lambda v, x: model.apply(v, x, train=True), v, x)
    leaves = train_out if isinstance(train_out, tuple) else (train_out,)
    assert all(o.shape == (2, *hw, 1) for o in leaves)


def test_minmax_rescale_is_linear_into_unit_interval():
  scales = jnp.array([1., 50., 1e-3])[:, None, None, None]
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 7, 9, 1)) * scales
  y = np.asarray(minmax_rescale(x))
  np.testing.assert_allclose(y.min(axis=(1, 2, 3)), 0.0, atol=1e-6)
  np.testing.assert_allclose(y.max(axis=(1, 2, 3)), 1.0, atol=1e-3)
  # Linear per example: y = a * x + b with a > 0.
  for i in range(3):
    xi, yi = np.asarray(x[i]).ravel(), y[i].ravel()
    a, b = np.polyfit(xi, yi, 1)
    assert a > 0
    np.testing.assert_allclose(a * xi + b, yi, atol=1e-5)


def test_aspp_head_sums_branches_and_rescales_into_unit_interval():
  head = ASPP(features=8, rates=(1, 2))
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 11, 13, 6))
  v = random_variables(head, x)
  raw = jax.jit(ASPP(features=8, rates=(1, 2), rescale=False).apply)(v, x)
  out = jax.jit(head.apply)(v, x)
  np.testing.assert_allclose(out, minmax_rescale(raw), rtol=1e-6, atol=1e-6)
  # The unscaled sum is not confined to [0, 1]; the rescaled one spans it exactly.
  assert float(raw.min()) < 0 or float(raw.max()) > 1
  np.testing.assert_allclose(out.min(axis=(1, 2, 3)), 0.0, atol=1e-6)
  np.testing.assert_allclose(out.max(axis=(1, 2, 3)), 1.0, atol=1e-5)
  # Sum fusion: the rescaled sum of the per-branch heads.
  p = v['params']
  conv = lambda y, k, d=1: jax.lax.conv_general_dilated(
      y, k, (1, 1), [(d * (k.shape[0] // 2),) * 2] * 2, rhs_dilation=(d, d),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  manual = 0
  for i, d in enumerate((1, 2)):
    y = jax.nn.relu(conv(x, p[f'branch{i}_conv']['kernel'], d))
    y = jax.nn.relu(conv(y, p[f'branch{i}_fc']['kernel']))
    manual = manual + conv(y, p[f'branch{i}_out']['kernel'])
  np.testing.assert_allclose(raw, manual, rtol=1e-4, atol=1e-5)


def test_aspp_model_output_is_in_unit_interval():
  model = create_model(variants.variant_config('aspp_s', SMALL))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 45, 61, 3))
  out = np.asarray(jax.jit(model.apply)(random_variables(model, x), x))
  assert out.shape == (2, 45, 61, 1)
  assert out.min() >= 0.0 and out.max() <= 1.0 + 1e-6
  assert out.max(axis=(1, 2, 3)).min() > 0.9  # upsampling keeps the range's top


def test_inception_a_concatenates_four_branches_with_a_pool_branch():
  module = InceptionModule(features=4, kernel_sizes=(3, 5), rates=(1, 1))
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 9, 10, 6))
  v = random_variables(module, x)
  assert set(v['params']) == {'conv1x1', 'branch0_reduce', 'branch0', 'branch1_reduce',
                              'branch1', 'pool_proj'}
  out = jax.jit(module.apply)(v, x)
  assert out.shape == (1, 9, 10, 16) and module.out_features == 16
  # The last 4 channels: relu(1x1 conv of the 3x3 stride-1 max pool).
  pooled = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 1, 1, 1),
                                 ((0, 0), (1, 1), (1, 1), (0, 0)))
  expected = jax.nn.relu(jnp.einsum('nhwc,cd->nhwd', pooled,
                                    v['params']['pool_proj']['kernel'][0, 0]))
  np.testing.assert_allclose(out[..., 12:], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('layers', [0, 1, 3])
def test_deconv_decoder_doubles_resolution_per_layer(layers):
  dec = DeconvDecoder(features=4, num_layers=layers)
  x = jnp.ones((1, 5, 7, 3))
  v = jax.eval_shape(dec.init, jax.random.PRNGKey(0), x)
  out = jax.eval_shape(lambda v, x: dec.apply(v, x), v, x)
  assert out.shape == (1, 5 * 2**layers, 7 * 2**layers, 1)


def test_resnet_stage_outputs_keep_parameter_names_and_strides():
  cfg = dict(width=8, stage_sizes=(1, 1, 1, 1), dilated=False)
  plain, staged = ResNet50(**cfg), ResNet50(**cfg, return_stages=True)
  x = jnp.zeros((1, 64, 96, 3))
  vp = jax.eval_shape(plain.init, jax.random.PRNGKey(0), x)
  vs = jax.eval_shape(staged.init, jax.random.PRNGKey(0), x)
  assert jax.tree.structure(vp) == jax.tree.structure(vs)
  out = jax.eval_shape(lambda v, x: staged.apply(v, x), vs, x)
  strides = {k: 64 // o.shape[1] for k, o in out.items()}
  assert strides == {'stem': 4, 'layer1': 4, 'layer2': 8, 'layer3': 16, 'layer4': 32}
  assert out['layer4'].shape == jax.eval_shape(lambda v, x: plain.apply(v, x), vp, x).shape


def test_skip_network_concatenates_upsampled_stages():
  model = create_model(variants.variant_config('skip', SMALL))
  p = params(variants.variant_config('skip', SMALL), (64, 96))
  # width 8: layer2 .. layer4 have 64, 128, 256 channels.
  assert p['context']['reduce']['kernel'].shape == (1, 1, 64 + 128 + 256, 16)
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 64, 96, 3))
  out = jax.jit(model.apply)(random_variables(model, x), x)
  assert out.shape == (1, 64, 96, 1) and 0 <= float(out.min()) <= float(out.max()) <= 1


def test_pyramid_shares_one_backbone():
  p = params(variants.variant_config('pyramid', SMALL), (64, 96))
  b = params(variants.variant_config('baseline', SMALL), (64, 96))
  assert count(p['backbone']) == count(b['backbone'])
  assert p['context']['reduce']['kernel'].shape == (1, 1, 3 * 256, 16)


def test_factory_rejects_unknown_and_inconsistent_values():
  with pytest.raises(ValueError, match='architecture'):
    create_model({'architecture': 'unet'})
  with pytest.raises(ValueError, match='decoder'):
    create_model({'decoder': 'mlp'})
  with pytest.raises(ValueError, match='two_decoders'):
    create_model({'architecture': 'two_decoders', 'fusion': 'concat'})
  with pytest.raises(ValueError, match='two_decoders'):
    create_model({'architecture': 'two_decoders', 'context': 'baseline'})
  with pytest.raises(ValueError, match='unknown variant'):
    variants.variant_config('dinet++')


def test_variant_config_overrides_only_structure():
  import ml_collections

  base = ml_collections.ConfigDict(dict(SMALL, context='dim', rates=(4, 8, 16), dtype='float32'))
  cfg = variants.variant_config('dim_beta', base)
  assert isinstance(cfg, ml_collections.ConfigDict)
  assert tuple(cfg.rates) == (8,) and cfg.backbone_width == 8 and cfg.context == 'dim'
  assert tuple(base.rates) == (4, 8, 16)  # the base is not modified
  assert variants.variant_config('aspp_l', SMALL)['context'] == 'aspp_l'
  # Rates come from the base: [alpha, beta, gamma] = (2, 4, 8) in configs/default.py.
  small = dict(SMALL, rates=(2, 4, 8))
  assert variants.variant_config('dim_gamma', small)['rates'] == (8,)
  assert variants.variant_config('dim_alpha_gamma', small)['rates'] == (2, 8)
  assert variants.variant_config('dinet', small)['rates'] == (2, 4, 8)
  assert variants.variant_config('dinet')['rates'] == (4, 8, 16)
  d = create_model(variants.variant_config('inception_d', small)).context
  assert tuple(d.rates) == (2, 4, 8) and not d.pool_branch and not d.conv1x1_branch
  with pytest.raises(ValueError, match='base rates'):
    variants.variant_config('dim_gamma', dict(SMALL, rates=(4, 8)))


def test_parameter_table_command(capsys):
  variants.main(['--table', '--markdown', '--variants', 'baseline', 'dinet', 'aspp_s'])
  out = capsys.readouterr().out
  lines = out.strip().splitlines()
  assert lines[0].startswith('| variant') and len(lines) == 5
  assert '| `dinet` |' in out and '26,983,744' in out and '+27.00' in out and '+7.02' in out
  rows = variants.parameter_table(names=['baseline', 'dim_alpha'])
  assert rows[1]['extra'] == 9 * W and rows[1]['extra_percent'] == pytest.approx(
      100 * 9 * W / 25_214_272)


@pytest.mark.slow
@pytest.mark.parametrize('name', list(variants.VARIANTS))
def test_every_variant_runs_and_trains_a_step(name):
  """Real forward and gradient of every reduced variant (compiles: slow)."""
  model = create_model(variants.variant_config(name, SMALL))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 41, 57, 3))
  v = random_variables(model, x)
  out = jax.jit(model.apply)(v, x)
  assert out.shape == (2, 41, 57, 1) and np.all(np.isfinite(out))

  def loss(p):
    preds = model.apply({**v, 'params': p}, x, train=True)
    preds = preds if isinstance(preds, tuple) else (preds,)
    return sum(jnp.mean(q) for q in preds)

  grads = jax.jit(jax.grad(loss))(v['params'])
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
