"""The compiled metric program: every requested metric of one batch in one XLA program."""

from __future__ import annotations

import functools

import numpy as np
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from dinet_jax.metrics import _auc, _maps

SALICON_N_RAND = 100_000  # random negatives of SALICON AUC
SALICON_STEP = 0.01      # threshold step of SALICON AUC and sAUC
AUC_NAMES = frozenset({'auc_judd', 'auc_borji', 'sauc'})
TOPK_NAMES = AUC_NAMES | {'information_gain'}  # need the fixated values and pixels
STATIC = ('names', 'protocol', 'kcap', 'jitter', 'n_splits', 'step')


def program(sal, fix, den, oth, base, ops, draws, seed, *, names, protocol, kcap, jitter,
            n_splits, step):
  """All requested metrics for one batch, sharing the intermediate maps.

  ``sal`` (B, h, w) is resized to the ground truth's (fixation, else density map) size;
  ``oth`` and ``base`` may have batch size 1; ``ops`` are the SALICON blur operators,
  ``draws`` the random pixels of AUC-Borji (see :func:`random_pixels`). Returns ``(scores, flags)``: ``scores[name]``
  is (B,) float32 (plus the sAUC histograms for :func:`sauc_stage2`), ``flags[(arg,
  what)]`` (B,) bool, True where the argument is invalid (non-finite or negative).
  """
  ref = fix if fix is not None else den
  b, h, w = ref.shape
  n = h * w
  flags = {}

  def flat(x, arg, nonneg=False):
    kind = jnp.dtype(x.dtype).kind  # unsigned and bool inputs need no checks
    x = x.astype(jnp.float32)
    if x.shape[1:] != (h, w):
      x = jax.image.resize(x, (x.shape[0], h, w), method='linear')
    x = x.reshape(x.shape[0], n)
    if kind in 'fc':
      lo, hi = jnp.min(x, axis=1), jnp.max(x, axis=1)  # min/max propagate NaN
      flags[(arg, 'NaN or infinite values')] = jnp.broadcast_to(
          ~(jnp.isfinite(lo) & jnp.isfinite(hi)), (b,))
    if nonneg and kind in 'fci':
      flags[(arg, 'negative values')] = jnp.broadcast_to(jnp.min(x, axis=1) < 0, (b,))
    return jnp.broadcast_to(x, (b, n))

  s = flat(sal, 'saliency_map', nonneg='kld' in names)
  f = flat(fix, 'fixation_map', nonneg=True) if fix is not None else None
  d = flat(den, 'density_map', nonneg='kld' in names) if den is not None else None
  o = flat(oth, 'other_fixation_map', nonneg=True) if oth is not None else None
  bl = flat(base, 'baseline_map') if base is not None else None
  fixated = f > 0 if f is not None else None
  salicon = protocol == 'salicon'
  out = {}

  if TOPK_NAMES & set(names):
    nf = jnp.sum(fixated, axis=1).astype(jnp.int32)
    masked = jnp.where(fixated, s, -jnp.inf)
    if n < kcap:
      masked = jnp.pad(masked, ((0, 0), (0, kcap - n)), constant_values=-jnp.inf)
    thr, idx = jax.lax.top_k(masked, kcap)
    valid = jnp.arange(kcap) < nf[:, None]
    lo, hi = jnp.min(s, axis=1, keepdims=True), jnp.max(s, axis=1, keepdims=True)
    constant = (hi == lo)[:, 0]
    sn, thr_n = (s - lo) / (hi - lo), (thr - lo) / (hi - lo)
    idx = jnp.minimum(idx, n - 1)  # padding of tiny maps
    counts = jnp.where(valid, jnp.take_along_axis(f, idx, axis=1), 0.0)
    if 'auc_judd' in names:
      out['auc_judd'] = _auc.auc_judd(s, (h, w), thr, nf, jitter=jitter)
    if 'auc_borji' in names:
      if salicon:
        v = _auc.auc_salicon(sn, thr_n, counts, draws, step=SALICON_STEP)
      else:
        v = _auc.auc_borji(sn, thr_n, nf, draws, step=step)
      out['auc_borji'] = jnp.where(constant | (nf == 0), jnp.nan, v)
    if 'sauc' in names:
      if o is None:
        v = jnp.full((b,), jnp.nan)
      elif salicon:
        v = _auc.sauc_salicon(sn, thr_n, counts, fixated, o, step=SALICON_STEP)
      else:  # the sampling runs in sauc_stage2, once over all images of a call
        fix_hist, pop_hist = _auc.sauc_mit_histograms(sn, thr_n, nf, o, step=step)
        out['sauc_fix_hist'], out['sauc_pop_hist'] = fix_hist, pop_hist
        v = jnp.zeros((b,))
      out['sauc'] = jnp.where(constant | (nf == 0), jnp.nan, v)
  if 'nss' in names:
    out['nss'] = (_maps.nss(s, f, ddof=0) if salicon
                  else _maps.nss(s, fixated.astype(jnp.float32), ddof=1))
  if 'cc' in names:
    if salicon:
      d_cc = _maps.blur(fixated.astype(jnp.float32).reshape(b, h, w), *ops).reshape(b, n)
    else:
      d_cc = d
    out['cc'] = _maps.cc(s, d_cc)
  if 'kld' in names:
    out['kld'] = _maps.kld(s, d)
  if 'sim' in names:
    out['sim'] = _maps.sim(s, d)
  if 'information_gain' in names:
    out['information_gain'] = (_maps.information_gain(s, bl, idx, valid) if bl is not None
                               else jnp.full((b,), jnp.nan))
  return out, flags


@functools.lru_cache(maxsize=16)
def random_pixels(seed: int, shape: tuple[int, ...], n: int) -> np.ndarray:
  """Uniform random pixel indices in [0, n), filled row by row from ``seed``: the first
  rows do not depend on how many rows there are (the fixation-count bucket), nor on the
  images they are used for."""
  return np.random.default_rng([seed, 1]).integers(0, n, shape, dtype=np.int32)


@functools.partial(jax.jit, static_argnames=('n_splits',))
def sauc_stage2(fix_hist, pop_hist, seed, *, n_splits):
  """MIT shuffled AUC of many images from their histograms (see ``_auc.sauc_mit``)."""
  return _auc.sauc_mit(fix_hist, pop_hist, jax.random.fold_in(jax.random.PRNGKey(seed), 2),
                       n_splits=n_splits)


single_device = jax.jit(program, static_argnames=STATIC)


@functools.lru_cache(maxsize=None)
def sharded(devices: tuple, batched_args: tuple[bool, ...]):
  """``program`` under jit and shard_map over ``devices``: each device runs it on its
  slice of the batch (compiled once for all of them). ``batched_args`` tells which of the
  five map arguments have the full batch axis (the others are replicated)."""
  mesh = Mesh(np.array(devices), ('d',))
  batch, rep = PartitionSpec('d'), PartitionSpec()

  def run(sal, fix, den, oth, base, ops, draws, seed, **static):
    specs = tuple(batch if b else rep for b in batched_args) + (rep, rep, rep)
    fn = jax.shard_map(functools.partial(program, **static), mesh=mesh, in_specs=specs,
                       out_specs=batch, check_vma=False)
    return fn(sal, fix, den, oth, base, ops, draws, seed)
  return jax.jit(run, static_argnames=STATIC)
