"""Model structure: parameter counts from the authors' architecture, output shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinet_jax.models import DINet, DilatedInception, ResNet50, create_model


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def shapes(model, hw=(240, 320)):
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *hw, 3)))


def test_dinet_parameter_counts_equal_the_authors_architecture():
  v = shapes(DINet())
  assert count(v['params']) == 26_983_744
  assert count(v['batch_stats']) == 53_120
  assert count(v['params']['backbone']) == 23_454_912 + 53_120
  assert count(v['params']['context']) == 2_293_760
  assert count(v['params']['decoder']) == 1_181_952


def test_baseline_differs_by_exactly_27_w():
  dinet = count(shapes(DINet())['params'])
  baseline = count(shapes(create_model({'context': 'baseline'}))['params'])
  assert baseline == 25_214_272
  assert dinet - baseline == 27 * 256 * 256


def test_concat_fusion_widens_the_decoder_input():
  model = create_model({'fusion': 'concat'})
  v = shapes(model)
  assert v['params']['decoder']['conv0']['kernel'].shape == (3, 3, 768, 256)


@pytest.mark.parametrize('hw', [(240, 320), (320, 480), (480, 640), (241, 321), (97, 131)])
def test_dinet_output_is_input_sized(hw):
  model = DINet()
  v = shapes(model, hw)
  out = jax.eval_shape(lambda v, x: model.apply(v, x), v, jnp.zeros((2, *hw, 3)))
  assert out.shape == (2, *hw, 1) and out.dtype == jnp.float32


@pytest.mark.parametrize('dilated,stride', [(True, 8), (False, 32)])
def test_backbone_output_stride(dilated, stride):
  model = ResNet50(dilated=dilated)
  v = shapes(model, (320, 480))
  out = jax.eval_shape(lambda v, x: model.apply(v, x), v, jnp.zeros((1, 320, 480, 3)))
  assert out.shape == (1, 320 // stride, 480 // stride, 2048)


def test_reduced_dinet_runs_in_range_and_bn_is_frozen():
  model = create_model({'backbone_width': 8, 'stage_sizes': (1, 1, 1, 1),
                        'context_features': 16, 'decoder_features': 16})
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 45, 61, 3))
  v = model.init(jax.random.PRNGKey(0), x)
  out, updates = model.apply(v, x, train=True, mutable=['batch_stats'])
  assert out.shape == (2, 45, 61, 1)
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  # Frozen BN: training leaves the running statistics untouched.
  jax.tree.map(np.testing.assert_array_equal, updates['batch_stats'], v['batch_stats'])


def test_trainable_bn_updates_statistics():
  model = create_model({'backbone_width': 8, 'stage_sizes': (1, 1, 1, 1), 'train_bn': True,
                        'context_features': 16, 'decoder_features': 16})
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  v = model.init(jax.random.PRNGKey(0), x)
  _, updates = model.apply(v, x, train=True, mutable=['batch_stats'])
  before = v['batch_stats']['backbone']['bn1']['mean']
  assert not np.allclose(updates['batch_stats']['backbone']['bn1']['mean'], before)


def test_dim_sum_equals_manual_sum_of_branches():
  dim = DilatedInception(features=4, rates=(1, 2))
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 9, 9, 6))
  v = dim.init(jax.random.PRNGKey(1), x)
  p = v['params']
  conv = lambda y, k, d: jax.lax.conv_general_dilated(
      y, k, (1, 1), [(d * (k.shape[0] // 2),) * 2] * 2, rhs_dilation=(d, d),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  r = jax.nn.relu(conv(x, p['reduce']['kernel'], 1))
  expected = sum(jax.nn.relu(conv(r, p[f'branch{i}']['kernel'], d)) for i, d in enumerate((1, 2)))
  np.testing.assert_allclose(dim.apply(v, x), expected, rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_output():
  cfg = {'backbone_width': 8, 'stage_sizes': (1, 1, 1, 1), 'context_features': 16,
         'decoder_features': 16}
  f32, bf16 = create_model(cfg), create_model({**cfg, 'dtype': 'bfloat16'})
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 48, 64, 3))
  v = f32.init(jax.random.PRNGKey(0), x)
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(bf16.init(jax.random.PRNGKey(0), x)))
  a, b = f32.apply(v, x), bf16.apply(v, x)
  assert b.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(a - b))) < 2e-2


def test_unknown_config_values_are_rejected():
  with pytest.raises(ValueError, match='context'):
    create_model({'context': 'aspp-xl'})
  with pytest.raises(ValueError, match='dtype'):
    create_model({'dtype': 'int8'})
