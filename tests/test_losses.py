"""Losses against plain numpy versions of their formulas, Theorem 1, gradients."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from dinet_jax import losses

EPS = 1e-7


# ------------------------------------------------------------------ numpy references

def np_normalize(x, kind):
  x = x.astype(np.float64)
  axes = tuple(range(1, x.ndim))
  if kind == 'linear':
    p = x / (EPS + x.sum(axis=axes, keepdims=True))
    return p, np.log(EPS + p)
  if kind == 'softmax':
    e = np.exp(x - x.max(axis=axes, keepdims=True))
    p = e / e.sum(axis=axes, keepdims=True)
    return p, np.log(p)
  return x, np.log(EPS + x)


def np_distance(kind, p, lp, q, lq):
  axes = tuple(range(1, p.ndim))
  if kind == 'tvd':
    return 0.5 * np.abs(p - q).sum(axis=axes)
  if kind == 'kld':
    return (q * (lq - lp)).sum(axis=axes)
  if kind == 'chisq':
    return ((p - q) ** 2 / (p + q + EPS)).sum(axis=axes)
  if kind == 'bhattacharyya':
    return -np.log(EPS + np.sqrt(p * q).sum(axis=axes))
  if kind == 'l1':
    return np.abs(p - q).sum(axis=axes)
  return ((p - q) ** 2).sum(axis=axes)


def np_loss(name, pred, target, fix):
  pred, target = pred.astype(np.float64), target.astype(np.float64)
  axes = tuple(range(1, pred.ndim))
  mean = lambda x: x.mean(axis=axes, keepdims=True)
  if name == 'nss':
    z = (pred - mean(pred)) / np.sqrt(mean((pred - mean(pred)) ** 2) + EPS)
    return -np.mean((z * fix).sum(axis=axes) / (EPS + fix.sum(axis=axes)))
  if name in ('cc', 'one_minus_cc'):
    dp, dt = pred - mean(pred), target - mean(target)
    cc = mean(dp * dt) / np.sqrt(mean(dp ** 2) * mean(dt ** 2) + EPS ** 2)
    return -cc.mean() if name == 'cc' else 1 - cc.mean()
  if name == 'bce':
    p = np.clip(pred, EPS, 1 - EPS)
    return np.mean(-(target * np.log(p) + (1 - target) * np.log(1 - p)))
  norm, dist = name.split('_', 1)
  return np.mean(np_distance(dist, *np_normalize(pred, norm), *np_normalize(target, norm)))


@pytest.fixture(scope='module')
def batch():
  rng = np.random.default_rng(0)
  pred = rng.uniform(0.01, 0.99, (3, 6, 7, 1)).astype(np.float32)
  target = rng.uniform(0, 1, (3, 6, 7, 1)).astype(np.float32)
  target[0, :2] = 0.0  # exact zeros in the target
  fix = (rng.random((3, 6, 7, 1)) < 0.2).astype(np.float32)
  fix[1, 0, 0, 0] = 3.0  # counts
  return pred, target, fix


# ------------------------------------------------------------------------------ values

def test_names():
  assert len(losses.LOSS_NAMES) == 3 * 6 + 4
  assert losses.available_losses() == losses.LOSS_NAMES
  for name in ('linear_tvd', 'softmax_kld', 'none_l1', 'none_l2', 'bce', 'nss', 'cc',
               'one_minus_cc', 'linear_bhattacharyya', 'softmax_chisq'):
    assert name in losses.LOSS_NAMES


@pytest.mark.parametrize('name', losses.LOSS_NAMES)
def test_loss_matches_numpy_formula(batch, name):
  pred, target, fix = batch
  got = losses.get_loss(name)(pred, target, fix)
  assert got.shape == () and got.dtype == jnp.float32
  assert float(got) == pytest.approx(np_loss(name, pred, target, fix), rel=2e-5, abs=1e-6)


def test_paper_loss_by_hand():
  """linear TVD of two 2-pixel maps: P = (1, 3)/4, Q = (1, 1)/2 -> 0.5 (1/4 + 1/4)."""
  pred = jnp.array([1.0, 3.0]).reshape(1, 1, 2, 1)
  target = jnp.array([0.5, 0.5]).reshape(1, 1, 2, 1)
  assert float(losses.get_loss('linear_tvd')(pred, target)) == pytest.approx(0.25, abs=1e-6)
  assert float(losses.get_loss('none_l1')(pred, target)) == pytest.approx(3.0)


def test_weighted_sums_and_parsing(batch):
  pred, target, fix = batch
  l = {n: float(losses.get_loss(n)(pred, target, fix)) for n in ('linear_tvd', 'nss', 'cc',
                                                                  'softmax_kld', 'bce')}
  cases = {'linear_tvd + 0.1 * nss': l['linear_tvd'] + 0.1 * l['nss'],
           '0.5*softmax_kld-2*cc': 0.5 * l['softmax_kld'] - 2 * l['cc'],
           'nss * 0.1 + 1e-2 * bce': 0.1 * l['nss'] + 1e-2 * l['bce'],
           '  linear_tvd  ': l['linear_tvd']}
  for expr, want in cases.items():
    assert float(losses.get_loss(expr)(pred, target, fix)) == pytest.approx(want, rel=1e-5)
  assert losses.parse_loss('linear_tvd + 0.1 * nss') == [(1.0, 'linear_tvd'), (0.1, 'nss')]
  assert losses.needs_fixations('linear_tvd + 0.1 * nss')
  assert not losses.needs_fixations('linear_tvd')
  assert losses.get_loss('0.1 * nss').needs_fixations


@pytest.mark.parametrize('expr', ['linear_tv', 'tvd', 'linear_tvd + nss2', '', '0.1 *',
                                  'linear_tvd nss', 'linear_tvd + * nss', '2 nss'])
def test_bad_names_raise_listing_valid_ones(expr):
  with pytest.raises(ValueError) as err:
    losses.get_loss(expr)
  assert 'linear_tvd' in str(err.value) or 'expected' in str(err.value)


def test_fixation_losses_need_fixations(batch):
  pred, target, _ = batch
  with pytest.raises(ValueError, match='fixation_map'):
    losses.get_loss('linear_tvd + 0.1 * nss')(pred, target)


def test_jit_and_bfloat16(batch):
  pred, target, fix = batch
  fn = losses.get_loss('linear_tvd + 0.1 * nss')
  eager = fn(pred, target, fix)
  jitted = jax.jit(fn)(pred, target, fix)
  assert float(jitted) == pytest.approx(float(eager), rel=1e-6)
  low = fn(jnp.asarray(pred, jnp.bfloat16), jnp.asarray(target, jnp.bfloat16), fix)
  assert low.dtype == jnp.float32
  assert float(low) == pytest.approx(float(eager), rel=2e-2)


def test_softmax_is_stable_for_large_inputs():
  x = jnp.array([1000.0, 0.0, -1000.0]).reshape(1, 1, 3, 1)
  p, log_p = losses.normalize(x, 'softmax')
  assert np.all(np.isfinite(np.asarray(log_p)))
  np.testing.assert_allclose(np.asarray(p).ravel(), [1, 0, 0], atol=1e-6)
  assert np.isfinite(float(losses.get_loss('softmax_kld')(x, x[:, :, ::-1])))


@pytest.mark.parametrize('name', losses.LOSS_NAMES)
def test_finite_values_and_gradients_for_all_zero_maps(batch, name):
  pred, target, fix = batch
  fn = losses.get_loss(name)
  zero = np.zeros_like(pred)
  for p, t, f in ((pred, zero, fix), (zero, target, fix), (zero, zero, np.zeros_like(fix))):
    value, grad = jax.value_and_grad(fn)(jnp.asarray(p), jnp.asarray(t), jnp.asarray(f))
    assert np.isfinite(float(value)), name
    assert np.all(np.isfinite(np.asarray(grad))), name


@pytest.mark.parametrize('name', ['linear_tvd', 'softmax_kld', 'linear_chisq', 'nss', 'cc'])
def test_gradients_match_finite_differences(batch, name):
  pred, target, fix = batch
  fn = losses.get_loss(name)
  grad = np.asarray(jax.grad(fn)(jnp.asarray(pred), target, fix))
  rng = np.random.default_rng(1)
  h = 1e-2 if name.startswith('softmax') else 3e-3
  for idx in zip(*(rng.integers(0, n, 6) for n in pred.shape)):
    up, down = pred.copy(), pred.copy()
    up[idx] += h
    down[idx] -= h
    fd = (np_loss(name, up, target, fix) - np_loss(name, down, target, fix)) / (2 * h)
    assert grad[idx] == pytest.approx(fd, rel=2e-2, abs=2e-5), (name, idx)


# ------------------------------------------------------------------------ Theorem 1

def _ranges(x):
  """Per-row (min, max) of the linear (Eq. 5, no epsilon) and softmax (Eq. 4) arrays."""
  x = jnp.asarray(x, jnp.float32)
  lin, _ = losses.normalize(x, 'linear', eps=0.0)
  soft, _ = losses.normalize(x, 'softmax')
  return [np.stack([np.asarray(a.min(axis=1)), np.asarray(a.max(axis=1))]) for a in (lin, soft)]


def test_theorem1_softmax_range_inside_linear_range():
  """For x in [0, 1]^N (not all zero) the softmax range lies inside the linear range:
  random arrays of several sizes and shapes of distribution, plus edge cases."""
  rng = np.random.default_rng(2)
  for n in (1, 2, 3, 10, 97, 400):
    x = rng.random((200, n)) ** rng.choice([0.2, 1.0, 8.0], (200, 1))
    x[:20] = np.round(x[:20])                      # only 0s and 1s
    x[20:30] = rng.random((10, 1))                 # constant arrays
    x[30:40, 0], x[40:50, -1] = 0.0, 1.0           # the extremes present
    x[np.all(x == 0, axis=1), 0] = 0.5             # Eq. 5 needs a non-zero sum
    (l_lo, l_hi), (s_lo, s_hi) = _ranges(x)
    tol = 1e-6 * np.maximum(l_hi, s_hi)
    assert np.all(l_lo <= s_lo + tol) and np.all(s_hi <= l_hi + tol), n


def test_theorem1_needs_inputs_in_unit_interval():
  (l_lo, l_hi), (s_lo, s_hi) = _ranges([[2.0, 3.0]])  # linear .4/.6, softmax .27/.73
  assert s_lo[0] < l_lo[0] and s_hi[0] > l_hi[0]
