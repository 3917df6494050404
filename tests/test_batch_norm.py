"""The frozen BatchNorm against flax's nn.BatchNorm: same map and gradients, fewer residuals."""

import contextlib
import io

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from dinet_jax.models.batch_norm import BatchNorm

SHAPE = (2, 5, 7, 16)


def _variables(seed: int = 0):
  """Statistics and affine parameters far from the identity (|mean| up to ~6 std)."""
  rng = np.random.default_rng(seed)
  c = SHAPE[-1]
  return {
      'params': {'scale': jnp.asarray(rng.uniform(-1.5, 1.5, c), jnp.float32),
                 'bias': jnp.asarray(rng.normal(0, 1, c), jnp.float32)},
      'batch_stats': {'mean': jnp.asarray(rng.normal(0, 3, c), jnp.float32),
                      'var': jnp.asarray(rng.uniform(0.05, 4, c), jnp.float32)},
  }


def _inputs(v, seed: int = 1):
  """Inputs distributed like the statistics say, as BatchNorm sees them in a network."""
  rng = np.random.default_rng(seed)
  s = v['batch_stats']
  x = np.asarray(s['mean']) + np.sqrt(np.asarray(s['var'])) * rng.standard_normal(SHAPE)
  return jnp.asarray(x, jnp.float32)


def _float64_reference(v, x):
  p, s = jax.tree.map(lambda a: np.asarray(a, np.float64), (v['params'], v['batch_stats']))
  return ((np.asarray(x, np.float64) - s['mean']) / np.sqrt(s['var'] + 1e-5)
          * p['scale'] + p['bias'])


def test_variables_and_initial_values_are_flax_batch_norms():
  x = jnp.ones(SHAPE)
  ours = BatchNorm(use_running_average=True).init(jax.random.PRNGKey(0), x)
  flax_bn = nn.BatchNorm(use_running_average=True).init(jax.random.PRNGKey(0), x)
  assert jax.tree.structure(ours) == jax.tree.structure(flax_bn)
  jax.tree.map(np.testing.assert_array_equal, ours, flax_bn)


def test_frozen_map_is_flaxs_op_for_op():
  v = _variables()
  x = _inputs(v)
  ours = BatchNorm(use_running_average=True, epsilon=1e-5)
  theirs = nn.BatchNorm(use_running_average=True, epsilon=1e-5)
  np.testing.assert_array_equal(ours.apply(v, x), theirs.apply(v, x))
  np.testing.assert_array_equal(jax.jit(ours.apply)(v, x), jax.jit(theirs.apply)(v, x))
  exact = _float64_reference(v, x)
  assert np.abs(np.asarray(ours.apply(v, x)) - exact).max() <= 2e-6 * np.abs(exact).max()


def test_frozen_gradients_equal_flax():
  v = _variables(2)
  x = _inputs(v, 3)
  w = jax.random.normal(jax.random.PRNGKey(4), SHAPE)

  def loss(cls, params, x):
    y = cls(use_running_average=True).apply(
        {'params': params, 'batch_stats': v['batch_stats']}, x)
    return jnp.sum(jax.nn.relu(y) * w)

  ours = jax.grad(lambda p, x: loss(BatchNorm, p, x), argnums=(0, 1))(v['params'], x)
  theirs = jax.grad(lambda p, x: loss(nn.BatchNorm, p, x), argnums=(0, 1))(v['params'], x)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def test_frozen_gradient_keeps_no_new_feature_map():
  """Flax's form keeps ``x - mean`` for the backward pass; the affine form keeps only x."""
  v = _variables()
  x = _inputs(v)

  def feature_map_residuals(cls):
    def f(params, x):
      y = cls(use_running_average=True).apply(
          {'params': params, 'batch_stats': v['batch_stats']}, x)
      return jnp.sum(y * y)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # jax's public listing of the residuals
      print_saved_residuals(f, v['params'], x)
    feature_map = 'f32[' + ','.join(map(str, x.shape)) + ']'
    return [line for line in out.getvalue().splitlines()
            if line.startswith(feature_map) and 'argument' not in line]

  assert len(feature_map_residuals(nn.BatchNorm)) == 2  # x - mean, and y
  assert len(feature_map_residuals(BatchNorm)) == 1  # y only


def test_batch_statistics_path_is_flax_batch_norm():
  v = _variables()
  x = _inputs(v)
  kw = dict(use_running_average=False, momentum=0.9, epsilon=1e-5)
  ours, ours_stats = BatchNorm(**kw).apply(v, x, mutable=['batch_stats'])
  theirs, their_stats = nn.BatchNorm(**kw).apply(v, x, mutable=['batch_stats'])
  np.testing.assert_array_equal(ours, theirs)
  jax.tree.map(np.testing.assert_array_equal, ours_stats, their_stats)
  # The flag may also come at call time.
  at_call = BatchNorm(momentum=0.9, epsilon=1e-5).apply(v, x, False, mutable=['batch_stats'])
  np.testing.assert_array_equal(at_call[0], theirs)


def test_bfloat16_output_dtype_and_accuracy():
  v = _variables()
  x = _inputs(v).astype(jnp.bfloat16)
  y = BatchNorm(use_running_average=True, dtype=jnp.bfloat16).apply(v, x)
  assert y.dtype == jnp.bfloat16
  exact = _float64_reference(v, np.asarray(x, np.float32))
  assert np.abs(np.asarray(y, np.float32) - exact).max() <= 1e-2 * np.abs(exact).max()


def test_unsupported_axis_is_named():
  with pytest.raises(ValueError, match='axis=1'):
    BatchNorm(use_running_average=True, axis=1).init(
        jax.random.PRNGKey(0), jnp.ones(SHAPE))
