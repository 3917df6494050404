"""Data parallelism: jit over 4 devices, pmap over 4 devices and 1 device agree."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dinet_jax import parallel, steps
from dinet_jax.models import create_model

TINY = {'backbone_width': 8, 'stage_sizes': (1, 1, 1, 1), 'context_features': 8,
        'decoder_features': 8, 'rates': (1, 2)}


def tvd(pred, target, fixation_map=None):
  p = pred / (1e-7 + pred.sum(axis=(1, 2, 3), keepdims=True))
  q = target / (1e-7 + target.sum(axis=(1, 2, 3), keepdims=True))
  return jnp.mean(0.5 * jnp.abs(p - q).sum(axis=(1, 2, 3)))


def batches(n=3, b=8, hw=(32, 48)):
  rng = np.random.default_rng(0)
  for _ in range(n):
    yield {'image': rng.standard_normal((b, *hw, 3)).astype(np.float32),
           'saliency': rng.random((b, *hw, 1)).astype(np.float32),
           'mask': np.ones((b,), bool)}


def run(mode, devices, train_bn=False):
  """Three SGD steps: parameters move in proportion to the averaged gradients, so a
  wrong reduction (a sum instead of a mean, a missing pmean) shows at once. (Adam would
  divide such errors away, and amplify rounding in near-zero gradients.)"""
  model = create_model({**TINY, 'train_bn': train_bn})
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 48, 3)))
  state = steps.create_train_state(model, variables, optax.sgd(1.0))
  par = parallel.Parallel(mode, tvd, update_stats=train_bn, devices=devices)
  state = par.put_state(state)
  losses = []
  for batch in batches():
    state, metrics = par.train_step(state, batch)
    losses.append(float(metrics['loss']))
  preds, sums = par.eval_step(state, next(batches(1)))
  return par.get_state(state), losses, preds, sums


@pytest.mark.parametrize('train_bn,modes', [(False, ('jit', 'pmap')), (True, ('jit',))])
def test_jit_pmap_and_single_device_agree(train_bn, modes):
  # With trained BatchNorm, pmap normalises with per-device batch statistics (as flax's
  # ImageNet example) and so differs from one device by design; jit's sharded batch
  # statistics are global and must agree.
  assert jax.device_count() == 4
  ref_state, ref_losses, ref_preds, ref_sums = run('jit', jax.devices()[:1], train_bn)
  for mode in modes:
    state, losses, preds, sums = run(mode, jax.devices(), train_bn)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 state.params, ref_state.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 state.batch_stats, ref_state.batch_stats)
    np.testing.assert_allclose(preds, ref_preds, rtol=1e-4, atol=1e-6)
    assert sums['count'] == 8
    np.testing.assert_allclose(sums['loss_sum'], ref_sums['loss_sum'], rtol=1e-5)
    assert int(state.step) == 3


def test_batch_size_must_divide_the_device_count():
  par = parallel.Parallel('jit', tvd)
  with pytest.raises(ValueError, match='batch_size=10 is not divisible by the 4 devices'):
    par.check_batch_size(10)


def test_eval_mask_excludes_padding_examples_from_the_loss():
  model = create_model(TINY)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 48, 3)))
  state = steps.create_train_state(model, variables, optax.adam(1e-2))
  par = parallel.Parallel('jit', tvd)
  state = par.put_state(state)
  batch = next(batches(1))
  _, full = par.eval_step(state, batch)
  batch['mask'][5:] = False
  batch['image'][5:] = 1e3  # garbage in padding examples must not matter
  _, masked = par.eval_step(state, batch)
  assert masked['count'] == 5
  preds, _ = par.eval_step(state, {k: v[:4] for k, v in next(batches(1)).items()})
  per_example = [tvd(preds[i:i + 1], next(batches(1))['saliency'][i:i + 1]) for i in range(4)]
  _, four = par.eval_step(state, {k: v[:4] for k, v in next(batches(1)).items()})
  np.testing.assert_allclose(four['loss_sum'], float(sum(per_example)), rtol=1e-5)
  assert masked['loss_sum'] < full['loss_sum']


@pytest.mark.parametrize('mode', ['jit', 'pmap'])
def test_grad_norm_is_computed_on_every_nth_step_only(mode):
  """With ``grad_norm_every=2`` the norm is NaN on odd steps and, on even steps, the
  global gradient norm of the plain step; the training itself is unchanged."""
  model = create_model(TINY)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 48, 3)))
  results = {}
  for every in (1, 2):
    par = parallel.Parallel(mode, tvd, grad_norm_every=every)
    fresh = jax.tree.map(jnp.array, variables)  # the step donates its input state
    state = par.put_state(steps.create_train_state(model, fresh, optax.sgd(1.0)))
    norms = []
    for batch in batches():
      state, metrics = par.train_step(state, batch)
      norms.append(float(metrics['grad_norm']))
    results[every] = norms, par.get_state(state).params
  (plain, plain_params), (sparse, sparse_params) = results[1], results[2]
  assert np.all(np.isfinite(plain)) and min(plain) > 0
  assert np.isnan(sparse[0]) and np.isnan(sparse[2])
  np.testing.assert_allclose(sparse[1], plain[1], rtol=1e-6)
  jax.tree.map(np.testing.assert_array_equal, sparse_params, plain_params)
  with pytest.raises(ValueError, match='grad_norm_every must be >= 1, got 0'):
    steps.train_step(steps.create_train_state(model, variables, optax.sgd(1.0)),
                     next(batches(1)), loss_fn=tvd, grad_norm_every=0)
