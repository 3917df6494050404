"""Batched AUC kernels (pure jnp, jit-compatible).

Conventions: ``s`` is the saliency map flattened to (B, N) at ground-truth size; ``thr``
(B, K) holds the saliency values at the fixated pixels sorted in descending order (the
first ``nf`` entries of each row are valid); every function returns (B,) float32 with
NaN where the score is undefined.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp

Array = jax.Array
_CHUNK = 32  # fixation thresholds compared per pass in AUC-Judd
_TILE = (16, 32)  # AUC-Judd skips tiles of this many pixels that lie below a chunk
_GROUP = 32  # tiles compared per inner loop iteration
_UNROLL = 4  # urn draws per loop iteration in sAUC


def _tiles(s: Array, shape: tuple[int, int]) -> tuple[Array, Array]:
  """(B, N) maps -> (B, T, _TILE_PIXELS) tiles of _TILE pixels, sorted by their maximum
  (descending), and those maxima. Padding pixels are -inf (never above a threshold);
  the tile count is padded to a multiple of _GROUP."""
  b = s.shape[0]
  (h, w), (th, tw) = shape, _TILE
  ph, pw = -h % th, -w % tw
  x = jnp.pad(s.reshape(b, h, w), ((0, 0), (0, ph), (0, pw)), constant_values=-jnp.inf)
  x = x.reshape(b, (h + ph) // th, th, (w + pw) // tw, tw).transpose(0, 1, 3, 2, 4)
  x = x.reshape(b, -1, th * tw)
  x = jnp.pad(x, ((0, 0), (0, -x.shape[1] % _GROUP), (0, 0)), constant_values=-jnp.inf)
  top = jnp.max(x, axis=2)
  order = jnp.argsort(-top, axis=1)
  return jnp.take_along_axis(x, order[..., None], axis=1), jnp.take_along_axis(top, order, 1)


def _judd_count_sum(s: Array, shape: tuple[int, int], thr: Array, nf: Array,
                    jitter: bool) -> Array:
  """Per image, sum over pixels x of #{t <= x} (+ #{t < x} if jitter), t the thresholds.

  One loop over work items (image, chunk of _CHUNK thresholds, group of _GROUP tiles):
  the cost follows each image's number of fixations, and a chunk only visits the tiles
  whose maximum reaches its smallest threshold (tiles are sorted by maximum; the others
  would add 0).
  """
  b, k = thr.shape
  valid = jnp.arange(k) < nf[:, None]
  thr = jnp.where(valid, thr, jnp.inf)
  tiles, top = _tiles(s, shape)
  n_tiles = tiles.shape[1]
  # per (image, chunk): the chunk's smallest valid threshold and its active tile groups
  chunks = k // _CHUNK
  lowest = jnp.min(jnp.where(valid, thr, jnp.inf).reshape(b, chunks, _CHUNK), axis=2)
  active = jnp.sum(top[:, None, :] >= lowest[:, :, None], axis=2)           # (B, chunks)
  groups = ((active + _GROUP - 1) // _GROUP).reshape(-1)                     # 0 if no chunk
  ends = jnp.cumsum(groups)
  items = jnp.arange(b * chunks * (n_tiles // _GROUP))
  owner = jnp.minimum(jnp.searchsorted(ends, items, side='right'), b * chunks - 1)
  group = items - (ends - groups)[owner]
  image, chunk = owner // chunks, owner % chunks

  def body(i, acc):
    t = jax.lax.dynamic_slice(thr, (image[i], chunk[i] * _CHUNK), (1, _CHUNK))[0]
    x = jax.lax.dynamic_slice(tiles, (image[i], group[i] * _GROUP, 0),
                              (1, _GROUP, tiles.shape[2]))[0]
    count = jnp.zeros(x.shape, jnp.int32)
    for j in range(_CHUNK):
      count = count + (t[j] <= x)
      if jitter:
        count = count + (t[j] < x)
    return acc.at[image[i]].add(jnp.sum(count).astype(jnp.float32))

  return jax.lax.fori_loop(0, ends[-1], body, jnp.zeros(b, jnp.float32))


def auc_judd(s: Array, shape: tuple[int, int], thr: Array, nf: Array, *, jitter: bool
             ) -> Array:
  """AUC-Judd (MIT): thresholds at the fixated values, negatives all other pixels.

  The trapezoid area of the MIT curve reduces to a closed form in
  ``c(x) = #{fixated values <= x}``: ``1 - (sum_x max(2 c(x) - 1, 0) / (2 Nf) - Nf / 2)
  / (N - Nf)``, exact with ties. With ``jitter`` the result is the expectation over the
  random tie-breaking that the reference's jitter performs (ties ordered at random).
  """
  n = s.shape[1]
  nff = nf.astype(jnp.float32)
  tmin = jnp.take_along_axis(thr, jnp.maximum(nf - 1, 0)[:, None], axis=1)
  below = jnp.sum(s < tmin, axis=1).astype(jnp.float32)
  total = _judd_count_sum(s, shape, thr, nf, jitter)
  if jitter:
    valid = jnp.arange(thr.shape[1]) < nf[:, None]
    e_min = jnp.sum((thr == tmin) & valid, axis=1).astype(jnp.float32)
    at_min = jnp.sum(s == tmin, axis=1).astype(jnp.float32)
    total = total + nff - n + below + (at_min - e_min) / (e_min + 1.0)
  else:
    total = 2.0 * total - n + below
  auc = 1.0 - (total / (2.0 * nff) - nff / 2.0) / (n - nff)
  bad = (nf == 0) | (nf == n)
  if not jitter:
    bad = bad | (jnp.max(s, axis=1) == jnp.min(s, axis=1))
  return jnp.where(bad, jnp.nan, auc)


def thresholds(step: float, inclusive: bool) -> np.ndarray:
  """The threshold grid k * step (float32) up to 1 (inclusive) or below 1 (exclusive)."""
  m = int(np.floor(1.0 / step + 1e-9)) + 1 if inclusive else int(np.ceil(1.0 / step - 1e-9))
  return np.arange(m, dtype=np.float32) * np.float32(step)


def _bin_index(v: Array, step: float, m: int) -> Array:
  """Largest k with k * step <= v (float32 arithmetic, as the grid), clipped to [0, m-1]."""
  step = jnp.float32(step)
  k = jnp.floor(v / step)
  k = jnp.where(k * step > v, k - 1, k)
  k = jnp.where((k + 1) * step <= v, k + 1, k)
  return jnp.clip(k, 0, m - 1).astype(jnp.int32)


def _hist(values: Array, weights: Array, step: float, m: int) -> Array:
  """Weighted histogram over the last axis of the threshold intervals [t_k, t_k+1):
  (..., L) -> (..., M). A scatter-add, much cheaper on CPU than M compare passes."""
  lead = values.shape[:-1]
  bins = _bin_index(values, step, m).reshape(-1, values.shape[-1])
  w = jnp.broadcast_to(weights, values.shape).reshape(bins.shape).astype(jnp.float32)
  # vmap (batched scatter) rather than explicit row indices: no large iota constants
  hist = jax.vmap(lambda i, v: jnp.zeros(m, jnp.float32).at[i].add(v))(bins, w)
  return hist.reshape(lead + (m,))


def _suffix(h: Array) -> Array:
  """Counts at or above each threshold from interval counts."""
  return jnp.cumsum(h[..., ::-1], axis=-1)[..., ::-1]


def _last_nonzero(h: Array) -> Array:
  """Index of the last non-zero entry along the last axis (-1 if none)."""
  m = h.shape[-1]
  return jnp.where(jnp.any(h > 0, axis=-1), m - 1 - jnp.argmax((h > 0)[..., ::-1], axis=-1), -1)


def _curve_area(tp: Array, fp: Array, valid: Array) -> Array:
  """Trapezoid area of (0,0), the valid thresholds from high to low, (1,1).

  ``tp``, ``fp``, ``valid``: (..., M) for ascending thresholds; invalid (too high)
  thresholds become (0, 0) points, which add no area.
  """
  tp = jnp.where(valid, tp, 0.0)[..., ::-1]
  fp = jnp.where(valid, fp, 0.0)[..., ::-1]
  shape = tp.shape[:-1] + (1,)
  x = jnp.concatenate([jnp.zeros(shape), fp, jnp.ones(shape)], axis=-1)
  y = jnp.concatenate([jnp.zeros(shape), tp, jnp.ones(shape)], axis=-1)
  return jnp.sum((x[..., 1:] - x[..., :-1]) * (y[..., 1:] + y[..., :-1]), axis=-1) / 2.0


def _split_auc(fix_hist: Array, neg_above: Array) -> Array:
  """Mean area over splits, thresholds inclusive of the max (MIT).

  ``fix_hist`` (B, M): fixated values per threshold interval; ``neg_above`` (B, S, M):
  negatives at or above each threshold, per split. A threshold t_k is used when
  t_k <= max(fixated, negatives), i.e. when k <= the highest non-empty interval.
  """
  tp = _suffix(fix_hist) / jnp.sum(fix_hist, axis=-1, keepdims=True)
  fp = neg_above / neg_above[..., :1]  # every value is >= t_0 = 0
  top = jnp.maximum(_last_nonzero(neg_above), _last_nonzero(fix_hist)[:, None])
  valid = jnp.arange(fix_hist.shape[-1]) <= top[..., None]
  return jnp.mean(_curve_area(tp[:, None, :], fp, valid), axis=1)


def auc_borji(sn: Array, thr_n: Array, nf: Array, draws: Array, *, step: float) -> Array:
  """AUC-Borji (MIT): per split, Nf negatives uniform over all pixels with replacement;
  thresholds 0:step:max(fixated, negatives). ``sn``, ``thr_n`` are min-max normalized;
  ``draws`` (K, splits) are random pixel indices shared by all images (the first Nf rows
  serve an image with Nf fixations)."""
  m = thresholds(step, inclusive=True).shape[0]
  valid = jnp.arange(thr_n.shape[1]) < nf[:, None]
  neg = jnp.take(sn, draws.T, axis=1)                                       # (B, S, K)
  return _split_auc(_hist(thr_n, valid, step, m),
                    _suffix(_hist(neg, valid[:, None, :], step, m)))


def sauc_mit_histograms(sn: Array, thr_n: Array, nf: Array, other: Array, *,
                        step: float) -> tuple[Array, Array]:
  """Per-image inputs of the MIT shuffled AUC: the threshold-interval histograms (B, M)
  of the fixated values and of the candidate negatives (pixels with ``other > 0``)."""
  m = thresholds(step, inclusive=True).shape[0]
  valid = jnp.arange(thr_n.shape[1]) < nf[:, None]
  return _hist(thr_n, valid, step, m), _hist(sn, other > 0, step, m)


def sauc_mit(fix_hist: Array, pop_hist: Array, key: Array, *, n_splits: int) -> Array:
  """Shuffled AUC (MIT) from ``sauc_mit_histograms``: per split, min(Nf, #candidates)
  negatives drawn without replacement from the candidates; thresholds as AUC-Borji.

  The curve depends on a negative only through the threshold interval it falls in, so
  the draw is done on interval counts: an urn holding the candidates' interval histogram
  is drawn from without replacement (the distribution of a uniform random subset). The
  draws are sequential but tiny, so this runs once over all images of a call.
  """
  b, m = pop_hist.shape
  n_cand = jnp.sum(pop_hist, axis=1)
  draws = jnp.minimum(jnp.sum(fix_hist, axis=1), n_cand)
  bins = jnp.arange(m)

  def draws_block(i, state):  # _UNROLL draws per loop iteration (loop overhead)
    left, above = state  # cumulative counts left in the urn; drawn counts >= t_k
    us = jax.random.uniform(jax.random.fold_in(key, i), (_UNROLL, n_splits, 1))
    for r in range(_UNROLL):
      active = (i * _UNROLL + r < draws)[:, None, None]
      total = left[..., -1:]
      target = jnp.minimum(us[r] * total, total - 0.5)  # integer counts: stays in range
      pick = jnp.sum(left <= target, axis=-1, keepdims=True)  # interval of the draw
      left = left - ((bins >= pick) & active)
      above = above + ((bins <= pick) & active)
    return left, above

  left = jnp.broadcast_to(jnp.cumsum(pop_hist, axis=-1)[:, None, :], (b, n_splits, m))
  n_blocks = (jnp.max(draws).astype(jnp.int32) + _UNROLL - 1) // _UNROLL
  _, above = jax.lax.fori_loop(0, n_blocks, draws_block, (left, jnp.zeros_like(left)))
  return jnp.where(n_cand == 0, jnp.nan, _split_auc(fix_hist, above))


def _exclusive_auc(fix_hist: Array, fix_top: Array, neg_hist: Array, neg_top: Array,
                   step: float) -> Array:
  """Area with thresholds 0:step:max exclusive of max (SALICON), from interval counts and
  the exact maxima of fixated and negative values."""
  t = jnp.asarray(thresholds(step, inclusive=False))
  tp = _suffix(fix_hist) / jnp.sum(fix_hist, axis=-1, keepdims=True)
  fp = _suffix(neg_hist) / jnp.sum(neg_hist, axis=-1, keepdims=True)
  return _curve_area(tp, fp, t < jnp.maximum(fix_top, neg_top)[:, None])


def auc_salicon(sn: Array, thr_n: Array, fixw: Array, draws: Array, *, step: float) -> Array:
  """SALICON 2015 'AUC': the pixels ``draws`` (one draw of 100,000 uniform random pixels)
  as negatives, fixations weighted by count (``fixw``, 0 = padding), thresholds exclusive
  of the max."""
  m = thresholds(step, inclusive=False).shape[0]
  neg = jnp.take(sn, draws, axis=1)                                         # (B, R)
  return _exclusive_auc(_hist(thr_n, fixw, step, m), thr_n[:, 0],
                        _hist(neg, jnp.ones((), jnp.float32), step, m), jnp.max(neg, axis=1),
                        step)


def sauc_salicon(sn: Array, thr_n: Array, fixw: Array, fixated: Array, other: Array, *,
                 step: float) -> Array:
  """SALICON 2015 shuffled AUC: negatives are all pixels fixated on other images of the
  evaluated set, weighted by ``other`` (how many images fixated each pixel), minus the
  current image's fixated pixels; fixations weighted by count; thresholds exclusive."""
  m = thresholds(step, inclusive=False).shape[0]
  w = jnp.where(fixated, 0.0, other.astype(jnp.float32))
  neg_hist = _hist(sn, w, step, m)
  area = _exclusive_auc(_hist(thr_n, fixw, step, m), thr_n[:, 0], neg_hist,
                        jnp.max(jnp.where(w > 0, sn, -jnp.inf), axis=1), step)
  return jnp.where(jnp.sum(neg_hist, axis=1) > 0, area, jnp.nan)
