"""Metrics against slow, literal numpy translations of the reference code and hand cases.

References: the MIT saliency benchmark Matlab code (AUC_Judd.m, AUC_Borji.m,
AUC_shuffled.m, NSS.m, CC.m, KLdiv.m, similarity.m, InfoGain.m) and the 2015 SALICON
evaluation code (auc.py, sauc.py, nss.py, cc.py), translated loop for loop.
"""

import itertools

import numpy as np
import pytest
import scipy.ndimage

from dinet_jax import metrics
from dinet_jax.metrics import _api, _auc

EPS = 2.2204e-16
H, W = 40, 56


# ----------------------------------------------------------------- numpy references (MIT)

def ref_minmax(x):
  return (x - x.min()) / (x.max() - x.min())


def ref_auc_judd(s, f, jitter_rng=None):
  s = np.asarray(s, np.float64)
  if jitter_rng is not None:
    s = s + jitter_rng.random(s.shape) / 1e7
  s = ref_minmax(s).ravel()
  fix = f.ravel() > 0
  sth = s[fix]
  nf, n = sth.size, s.size
  thresholds = np.sort(sth)[::-1]
  tp, fp = np.zeros(nf + 2), np.zeros(nf + 2)
  tp[-1] = fp[-1] = 1
  for i, t in enumerate(thresholds, 1):
    above = np.sum(s >= t)
    tp[i] = i / nf
    fp[i] = (above - i) / (n - nf)
  return np.trapezoid(tp, fp)


def ref_curve(sth, neg, step, inclusive=True, fix_w=None, neg_w=None):
  top = float(max(sth.max(), neg.max()))
  thr = np.arange(0, top + (step * 1e-9 if inclusive else 0), step)  # Matlab 0:step:top
  if not inclusive:
    thr = thr[thr < top]
  fix_w = np.ones(sth.size) if fix_w is None else fix_w
  neg_w = np.ones(neg.size) if neg_w is None else neg_w
  tp = [0.0] + [fix_w[sth >= t].sum() / fix_w.sum() for t in thr[::-1]] + [1.0]
  fp = [0.0] + [neg_w[neg >= t].sum() / neg_w.sum() for t in thr[::-1]] + [1.0]
  return np.trapezoid(tp, fp)


def ref_auc_borji(s, f, rng, n_splits=100, step=0.1):
  s = ref_minmax(np.asarray(s, np.float64)).ravel()
  sth = s[f.ravel() > 0]
  r = rng.integers(0, s.size, (sth.size, n_splits))
  return np.mean([ref_curve(sth, s[r[:, k]], step) for k in range(n_splits)])


def ref_sauc(s, f, other, rng, n_splits=100, step=0.1):
  s = ref_minmax(np.asarray(s, np.float64)).ravel()
  sth = s[f.ravel() > 0]
  ind = np.flatnonzero(other.ravel() > 0)
  m = min(sth.size, ind.size)
  return np.mean([ref_curve(sth, s[rng.permutation(ind)[:m]], step) for _ in range(n_splits)])


def ref_nss(s, f):
  s = np.asarray(s, np.float64)
  z = (s - s.mean()) / s.std(ddof=1)
  return z.ravel()[f.ravel() > 0].mean()


def ref_cc(s, d):
  return np.corrcoef(np.ravel(s).astype(np.float64), np.ravel(d).astype(np.float64))[0, 1]


def ref_kld(s, d):
  p, q = np.asarray(s, np.float64), np.asarray(d, np.float64)
  p = p / p.sum() if p.any() else p
  q = q / q.sum() if q.any() else q
  return np.sum(q * np.log(EPS + q / (p + EPS)))


def ref_sim(s, d):
  def norm(x):
    x = np.asarray(x, np.float64)
    if x.any():
      x = ref_minmax(x)
      x = x / x.sum()
    return x
  return np.minimum(norm(s), norm(d)).sum()


def ref_ig(s, f, b):
  p = ref_minmax(np.asarray(s, np.float64)).ravel()
  q = ref_minmax(np.asarray(b, np.float64)).ravel()
  p, q = p / p.sum(), q / q.sum()
  locs = f.ravel() > 0
  return np.mean(np.log2(EPS + p[locs]) - np.log2(EPS + q[locs]))


# ------------------------------------------------------------- numpy references (SALICON)

def fixation_list(f):
  """(y, x) 1-based fixations with duplicates, as in SALICON annotations."""
  ys, xs = np.nonzero(f)
  return [(y + 1, x + 1) for y, x in zip(ys, xs) for _ in range(int(f[y, x]))]


def ref_salicon_auc(s, fixations, rng, step=0.01, n_rand=100000):
  sal = ref_minmax(np.asarray(s, np.float64))
  flat = sal.reshape(-1)
  sth = np.asarray([sal[y - 1][x - 1] for y, x in fixations])
  randfix = flat[rng.integers(flat.size, size=n_rand)]
  thr = np.arange(0, np.max(np.concatenate((sth, randfix))), step)[::-1]
  tp, fp = np.zeros(len(thr) + 2), np.zeros(len(thr) + 2)
  tp[-1] = fp[-1] = 1.0
  tp[1:-1] = [np.sum(sth >= t) / len(fixations) for t in thr]
  fp[1:-1] = [np.sum(randfix >= t) / n_rand for t in thr]
  return np.trapezoid(tp, fp)


def ref_salicon_sauc(s, fixations, shuf_map, step=0.01):
  sal = np.asarray(s, np.float64) - np.min(s)
  sal = sal / sal.max()
  sth = np.asarray([sal[y - 1][x - 1] for y, x in fixations])
  others = np.copy(shuf_map)
  for y, x in fixations:
    others[y - 1][x - 1] = 0
  ind = np.nonzero(others)
  n_fix, randfix = shuf_map[ind], sal[ind]
  thr = np.arange(0, np.max(np.concatenate((sth, randfix))), step)[::-1]
  tp, fp = np.zeros(len(thr) + 2), np.zeros(len(thr) + 2)
  tp[-1] = fp[-1] = 1.0
  tp[1:-1] = [np.sum(sth >= t) / len(fixations) for t in thr]
  fp[1:-1] = [np.sum(n_fix[randfix >= t]) / np.sum(n_fix) for t in thr]
  return np.trapezoid(tp, fp)


def ref_salicon_nss(s, fixations):
  sal = np.asarray(s, np.float64)
  sal = (sal - sal.mean()) / sal.std()
  return np.mean([sal[y - 1][x - 1] for y, x in fixations])


def ref_salicon_cc(s, fixations):
  fmap = np.zeros(np.shape(s))
  for y, x in fixations:
    fmap[y - 1][x - 1] = 1
  fmap = scipy.ndimage.gaussian_filter(fmap, 19)
  return np.corrcoef(np.ravel(s), fmap.ravel())[0, 1]


# ---------------------------------------------------------------------------- test data

def _smooth(rng, n, h, w, blobs=5, sigma=6.0):
  yy, xx = np.mgrid[:h, :w]
  out = np.zeros((n, h, w))
  for i in range(n):
    for _ in range(blobs):
      cy, cx = rng.uniform(0, h), rng.uniform(0, w)
      out[i] += rng.uniform(0.3, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
  return out


@pytest.fixture(scope='module')
def data():
  """A batch of 4 images: smooth saliency maps, fixations drawn from the density (with
  repeats, so the fixation maps hold counts), density maps, other-image maps, baseline."""
  rng = np.random.default_rng(0)
  n = 4
  den = _smooth(rng, n, H, W)
  sal = (0.6 * den + 0.4 * _smooth(rng, n, H, W) + 0.01 * rng.random((n, H, W)))
  fix = np.zeros((n, H, W), np.uint8)
  for i in range(n):
    p = den[i].ravel() / den[i].sum()
    np.add.at(fix[i].reshape(-1), rng.choice(H * W, 120, p=p), 1)
  other = np.zeros((n, H, W), np.uint8)
  for i in range(n):
    for j in range(n):
      if j != i:
        other[i] |= fix[j] > 0
  yy, xx = np.mgrid[:H, :W]
  base = np.exp(-((yy - H / 2) ** 2 / (2 * (H / 4) ** 2) + (xx - W / 2) ** 2 / (2 * (W / 4) ** 2)))
  return dict(sal=sal.astype(np.float32), fix=fix, den=den.astype(np.float32), other=other,
              base=base.astype(np.float32))


@pytest.fixture(scope='module')
def scores(data):
  return metrics.compute_all(data['sal'], data['fix'], data['den'], baseline_map=data['base'],
                             other_fixation_map=data['other'])


def _single(data, s, f, other):
  """compute_all on one (H, W) image with the fixture's argument types (one compilation
  per fixation-count bucket)."""
  return metrics.compute_all(np.asarray(s, np.float32), np.asarray(f, np.uint8),
                             data['den'][0], baseline_map=data['base'],
                             other_fixation_map=np.asarray(other, np.uint8))


@pytest.fixture(scope='module')
def dense(data):
  """One image with ~600 fixated pixels and many candidates (low sampling variance)."""
  rng = np.random.default_rng(3)
  s = _smooth(rng, 1, H, W, blobs=6)[0] + 0.05 * rng.random((H, W))
  f = (rng.random((H, W)) < 0.7 * s / s.max()).astype(np.uint8)
  other = (rng.random((H, W)) < 0.5).astype(np.uint8)
  assert 400 < np.count_nonzero(f) < 1024
  return s, f, other, _single(data, s, f, other)


# -------------------------------------------------------------------- agreement with refs

@pytest.mark.parametrize('name', ['nss', 'cc', 'kld', 'sim', 'information_gain'])
def test_value_metrics_match_reference(data, scores, name):
  for i in range(len(data['sal'])):
    s, f, d = data['sal'][i], data['fix'][i], data['den'][i]
    want = {'nss': lambda: ref_nss(s, f), 'cc': lambda: ref_cc(s, d),
            'kld': lambda: ref_kld(s, d), 'sim': lambda: ref_sim(s, d),
            'information_gain': lambda: ref_ig(s, f, data['base'])}[name]()
    assert scores[name][i] == pytest.approx(want, abs=1e-4, rel=1e-4), (name, i)


def test_auc_judd_matches_reference_with_and_without_ties(data, scores):
  for i in range(len(data['sal'])):
    want = ref_auc_judd(data['sal'][i], data['fix'][i])
    assert scores['auc_judd'][i] == pytest.approx(want, abs=1e-4)  # no ties: jitter moot
  tied = np.round(data['sal'] * 8) / 8  # few levels: many ties, also at fixations
  got = metrics.auc_judd(tied, data['fix'], jitter=False)
  want = [ref_auc_judd(tied[i], data['fix'][i]) for i in range(len(tied))]
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_auc_judd_jitter_is_the_expectation_over_tie_breaking():
  """Brute force over every ordering of the tied pixels of a tiny map."""
  s = np.array([[0.5, 0.5, 0.2], [0.5, 0.9, 0.2], [0.2, 0.5, 0.0]], np.float32)
  f = np.array([[1, 0, 1], [0, 1, 0], [0, 1, 0]], np.uint8)
  groups = [np.flatnonzero(s.ravel() == v) for v in np.unique(s)]
  values = []
  for orders in itertools.product(*[itertools.permutations(g) for g in groups]):
    ranked = s.ravel().astype(np.float64).copy()
    for g, order in zip(groups, orders):
      ranked[list(order)] += np.arange(len(order)) * 1e-6  # a strict order within ties
    values.append(ref_auc_judd(ranked.reshape(s.shape), f))
  assert metrics.auc_judd(s, f) == pytest.approx(np.mean(values), abs=1e-6)
  # and close to the Matlab-style random jitter averaged over many draws
  rng = np.random.default_rng(1)
  jittered = np.mean([ref_auc_judd(s, f, rng) for _ in range(4000)])
  assert metrics.auc_judd(s, f) == pytest.approx(jittered, abs=0.01)


def test_auc_curve_matches_reference_for_given_negatives():
  """The threshold curve machinery, with the negatives fixed (no sampling)."""
  import jax
  rng = np.random.default_rng(2)
  # ties among values, 0 and 1 (the only grid values float32 and float64 agree on)
  sth = (np.round(rng.random(37) * 20) / 20 + 0.01).clip(0, 1).astype(np.float32)
  neg = (np.round(rng.random((3, 37)) * 20) / 20 + 0.01).clip(0, 1).astype(np.float32)
  sth[:2], neg[0, :2] = (1.0, 0.0), (0.0, 1.0)
  m = _auc.thresholds(0.1, inclusive=True).shape[0]
  valid = np.ones((1, 37), bool)
  got = jax.jit(lambda a, b: _auc._split_auc(
      _auc._hist(a, valid, 0.1, m), _auc._suffix(_auc._hist(b, valid[:, None], 0.1, m))))(
          sth[None], neg[None])
  want = np.mean([ref_curve(sth, neg[k], 0.1) for k in range(3)])
  assert float(got[0]) == pytest.approx(want, abs=1e-6)


def test_auc_borji_matches_reference_statistically(dense):
  s, f, _, got = dense
  rng = np.random.default_rng(30)
  assert got['auc_borji'] == pytest.approx(ref_auc_borji(s, f, rng), abs=0.005)


def test_sauc_matches_reference(data, dense):
  s, f, other, got = dense
  rng = np.random.default_rng(31)
  assert got['sauc'] == pytest.approx(ref_sauc(s, f, other, rng), abs=0.005)
  # fewer candidates than fixations: every candidate drawn, deterministic, exact
  few = np.zeros((H, W), np.uint8)
  few.ravel()[np.random.default_rng(4).choice(H * W, 40, replace=False)] = 1
  want = ref_sauc(data['sal'][0], data['fix'][0], few, rng, n_splits=3)
  assert _single(data, data['sal'][0], data['fix'][0], few)['sauc'] == pytest.approx(
      want, abs=1e-5)


def test_sampling_is_seeded_and_batch_independent(data, scores):
  i = 2
  single = _single(data, data['sal'][i], data['fix'][i], data['other'][i])
  for name, value in single.items():
    assert isinstance(value, float)
    if name not in ('kld', 'sim', 'cc'):  # those use data['den'][0] here
      assert value == pytest.approx(scores[name][i], abs=1e-5), name
  again = metrics.compute_all(data['sal'], data['fix'], data['den'], baseline_map=data['base'],
                              other_fixation_map=data['other'])
  other_seed = metrics.compute_all(data['sal'], data['fix'], data['den'], seed=1,
                                   baseline_map=data['base'], other_fixation_map=data['other'])
  for name in ('auc_borji', 'sauc'):
    np.testing.assert_array_equal(again[name], scores[name])
    assert np.all(other_seed[name] != scores[name])


def test_sharded_chunks_equal_one_chunk(data, scores, monkeypatch):
  import jax
  if len(jax.local_devices()) < 2:
    pytest.skip('needs several (CPU) devices')
  monkeypatch.setattr(_api, 'CHUNK_PIXELS', H * W)  # one image per device and call
  sharded = metrics.compute_all(data['sal'], data['fix'], data['den'],
                                baseline_map=data['base'], other_fixation_map=data['other'])
  for name in metrics.METRIC_NAMES:
    np.testing.assert_allclose(sharded[name], scores[name], atol=1e-5, err_msg=name)


def test_saliency_map_is_resized_to_the_ground_truth(data):
  import jax
  small = data['sal'][:, ::2, ::2]
  resized = np.asarray(jax.image.resize(small, (len(small), H, W), 'linear'))
  got = metrics.nss(small, data['fix'])
  np.testing.assert_allclose(got, [ref_nss(resized[i], data['fix'][i])
                                   for i in range(len(small))], atol=1e-4)


# ---------------------------------------------------------------------------- SALICON

def test_salicon_protocol_matches_salicon_code(data):
  fix_lists = [fixation_list(f) for f in data['fix']]
  assert sum(len(l) for l in fix_lists) > np.count_nonzero(data['fix'])  # has repeats
  got = metrics.compute_all(data['sal'], data['fix'], data['den'], protocol='salicon')
  shuf = np.sum(data['fix'] > 0, axis=0)
  rng = np.random.default_rng(6)
  for i, fl in enumerate(fix_lists):
    s = data['sal'][i]
    assert got['nss'][i] == pytest.approx(ref_salicon_nss(s, fl), abs=1e-4)
    assert got['cc'][i] == pytest.approx(ref_salicon_cc(s, fl), abs=1e-4)
    assert got['sauc'][i] == pytest.approx(ref_salicon_sauc(s, fl, shuf), abs=1e-4)
    assert got['auc_borji'][i] == pytest.approx(ref_salicon_auc(s, fl, rng), abs=0.005)
    assert got['auc_judd'][i] == pytest.approx(ref_auc_judd(s, data['fix'][i]), abs=1e-4)


def test_salicon_blur_is_scipy_gaussian_filter():
  rng = np.random.default_rng(7)
  x = (rng.random((30, 50)) < 0.05).astype(np.float64)
  got = metrics.gaussian_operator(30, 19.0) @ x @ metrics.gaussian_operator(50, 19.0).T
  np.testing.assert_allclose(got, scipy.ndimage.gaussian_filter(x, 19), atol=1e-6)


# --------------------------------------------------------------------------- hand cases
# All on 8x8 float32 maps with every argument given: one compilation for the lot.

def _all8(s, f, d=None, other=None, base=None):
  d = np.random.default_rng(8).random((8, 8)) if d is None else d
  other = np.ones((8, 8)) if other is None else other
  base = d if base is None else base
  return metrics.compute_all(*(np.asarray(x, np.float32) for x in (s, f, d)),
                             other_fixation_map=np.asarray(other, np.float32),
                             baseline_map=np.asarray(base, np.float32))


def _fix8():
  f = np.zeros((8, 8), np.float32)
  f[2, 3] = f[5, 7] = f[7, 1] = 1
  return f


def test_map_equal_to_fixation_map():
  f = _fix8()
  nf, n = 3, 64
  p = nf / n
  vals = _all8(f, f, d=f)
  assert vals['nss'] == pytest.approx((1 - p) / np.sqrt(n * p * (1 - p) / (n - 1)))
  assert vals['auc_judd'] == pytest.approx(1.0)  # ties among fixations only
  assert vals['cc'] == pytest.approx(1.0)
  assert vals['sim'] == pytest.approx(1.0)
  assert vals['kld'] == pytest.approx(0.0, abs=1e-6)
  assert vals['auc_borji'] == pytest.approx(1.0, abs=0.05)
  # unjittered Matlab curve with all fixated values tied: 1 - (Nf - 1) / (2 (N - Nf))
  assert metrics.auc_judd(f, f, jitter=False) == pytest.approx(1 - (nf - 1) / (2 * (n - nf)))


def test_individual_functions_equal_compute_all():
  rng = np.random.default_rng(10)
  s, d = rng.random((8, 8)).astype(np.float32), rng.random((8, 8)).astype(np.float32)
  f, other = _fix8(), (rng.random((8, 8)) < 0.3).astype(np.float32)
  vals = _all8(s, f, d=d, other=other, base=d)
  assert metrics.nss(s, f) == pytest.approx(vals['nss'], abs=1e-6)
  assert metrics.cc(s, d) == pytest.approx(vals['cc'], abs=1e-6)
  assert metrics.kld(s, d) == pytest.approx(vals['kld'], abs=1e-6)
  assert metrics.sim(s, d) == pytest.approx(vals['sim'], abs=1e-6)
  assert metrics.information_gain(s, f, d) == pytest.approx(vals['information_gain'], abs=1e-6)
  assert metrics.auc_borji(s, f) == pytest.approx(vals['auc_borji'], abs=1e-6)
  assert metrics.sauc(s, f, other) == pytest.approx(vals['sauc'], abs=1e-6)
  assert metrics.auc_judd(s, f) == pytest.approx(vals['auc_judd'], abs=1e-6)


def test_constant_and_empty_inputs_give_documented_values():
  f = _fix8()
  const = np.full((8, 8), 0.5, np.float32)
  vals = _all8(const, f)
  for name in ('nss', 'cc', 'sim', 'information_gain', 'auc_borji', 'sauc'):
    assert np.isnan(vals[name]), name
  assert np.isnan(metrics.auc_judd(const, f, jitter=False))
  # jittered: expectation over a random order of 64 tied pixels, Nf = 3 (closed form)
  k, n = 3, 64
  total = n * k + k - n + (n - k) / (k + 1)
  assert vals['auc_judd'] == pytest.approx(1 - (total / (2 * k) - k / 2) / (n - k))
  d = np.random.default_rng(8).random((8, 8))
  assert vals['kld'] == pytest.approx(ref_kld(const, d), abs=1e-5)
  no_fix = _all8(d, np.zeros((8, 8)))
  for name in ('auc_judd', 'auc_borji', 'sauc', 'nss', 'information_gain'):
    assert np.isnan(no_fix[name]), name
  zero_density = _all8(d, f, d=np.zeros((8, 8)))
  assert np.isnan(zero_density['cc'])
  assert zero_density['kld'] == 0.0 and zero_density['sim'] == 0.0
  assert np.isnan(_all8(d, f, other=np.zeros((8, 8)))['sauc'])  # no candidates
  missing = metrics.compute_all(d, f, d)  # no baseline_map, no other_fixation_map (MIT)
  assert np.isnan(missing['information_gain']) and np.isnan(missing['sauc'])
  assert np.isfinite(missing['auc_borji'])


@pytest.mark.parametrize('arg', ['saliency_map', 'fixation_map', 'density_map',
                                 'other_fixation_map', 'baseline_map'])
def test_nan_inputs_raise_naming_the_argument(arg):
  maps = {a: np.ones((8, 8)) for a in ('density_map', 'other_fixation_map', 'baseline_map')}
  maps['saliency_map'] = np.arange(64.0).reshape(8, 8)
  maps['fixation_map'] = _fix8()  # few fixations: the same compilation as the hand cases
  maps[arg][3, 4] = np.nan
  with pytest.raises(ValueError, match=arg):
    _all8(maps['saliency_map'], maps['fixation_map'], d=maps['density_map'],
          other=maps['other_fixation_map'], base=maps['baseline_map'])


def test_invalid_inputs_raise():
  s = np.random.default_rng(9).random((8, 8)).astype(np.float32)
  f = _fix8()
  with pytest.raises(ValueError, match='fixation_map.*negative'):
    metrics.nss(s, -f)
  with pytest.raises(ValueError, match='negative'):
    metrics.kld(s - 0.5, s)
  with pytest.raises(ValueError, match='density_map has shape'):
    metrics.compute_all(s, f, np.ones((8, 9)))
  with pytest.raises(ValueError, match='maps'):
    metrics.nss(np.stack([s, s]), np.stack([f, f, f]))
  with pytest.raises(ValueError, match='shape'):
    metrics.nss(np.stack([s, s]), f)
  with pytest.raises(ValueError, match='protocol'):
    metrics.nss(s, f, protocol='lsun')
  with pytest.raises(ValueError, match='unknown metrics'):
    metrics.evaluate(('auc',), s, f)
  with pytest.raises(ValueError, match='other_fixation_map'):
    metrics.sauc(s, f, None)
  with pytest.raises(ValueError, match='baseline_map'):
    metrics.information_gain(s, f, None)
  with pytest.raises(ValueError, match='numeric'):
    metrics.nss(np.array([['a']]), f)
