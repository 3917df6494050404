"""Batched value- and distribution-based metric kernels (pure jnp, jit-compatible).

Maps are flattened to (B, N) float32 at ground-truth size; results are (B,) float32.
"""

from __future__ import annotations

import functools

import numpy as np
import jax
import jax.numpy as jnp

Array = jax.Array
MATLAB_EPS = 2.2204e-16  # eps of the MIT benchmark code


def _mean(x: Array) -> Array:
  return jnp.mean(x, axis=1, keepdims=True)


def nss(s: Array, fix: Array, *, ddof: int) -> Array:
  """Mean of the standardized map over the fixation weights ``fix`` (B, N).

  MIT: binary weights, ``ddof=1`` (Matlab std); SALICON: fixation counts, ``ddof=0``.
  """
  mu = _mean(s)
  sd = jnp.sqrt(jnp.sum(jnp.square(s - mu), axis=1) / (s.shape[1] - ddof))
  at_fix = jnp.sum(fix * s, axis=1) / jnp.sum(fix, axis=1)
  return (at_fix - mu[:, 0]) / sd


def cc(s: Array, d: Array) -> Array:
  """Pearson correlation of two maps."""
  ds, dd = s - _mean(s), d - _mean(d)
  return jnp.sum(ds * dd, axis=1) / jnp.sqrt(
      jnp.sum(jnp.square(ds), axis=1) * jnp.sum(jnp.square(dd), axis=1))


def _nonzero(x: Array) -> Array:
  """(B, 1): any(x != 0), from the min and max (shared with other metrics)."""
  return (jnp.min(x, axis=1, keepdims=True) != 0) | (jnp.max(x, axis=1, keepdims=True) != 0)


def _to_distribution(x: Array) -> Array:
  """x / sum(x), left unchanged when x is all zero (as the Matlab code does)."""
  return jnp.where(_nonzero(x), x / jnp.sum(x, axis=1, keepdims=True), x)


def kld(s: Array, d: Array) -> Array:
  """KL(Q || P) = sum Q log(eps + Q / (P + eps)), P = s / sum s, Q = d / sum d."""
  p, q = _to_distribution(s), _to_distribution(d)
  return jnp.sum(q * jnp.log(MATLAB_EPS + q / (p + MATLAB_EPS)), axis=1)


def _minmax(x: Array) -> Array:
  lo, hi = jnp.min(x, axis=1, keepdims=True), jnp.max(x, axis=1, keepdims=True)
  return (x - lo) / (hi - lo)


def sim(s: Array, d: Array) -> Array:
  """Histogram intersection of the min-max, then sum, normalized maps (all-zero maps stay
  zero; a constant non-zero map gives NaN)."""
  def norm(x):
    y = _minmax(x)
    return jnp.where(_nonzero(x), y / jnp.sum(y, axis=1, keepdims=True), x)
  return jnp.sum(jnp.minimum(norm(s), norm(d)), axis=1)


def information_gain(s: Array, base: Array, idx: Array, valid: Array) -> Array:
  """Mean over fixated pixels of log2(eps + P) - log2(eps + B), P and B min-max then sum
  normalized; ``idx`` (B, K) are the fixated pixels' flat indices, ``valid`` marks them."""
  def log_density_at_fixations(x):
    lo, hi = jnp.min(x, axis=1, keepdims=True), jnp.max(x, axis=1, keepdims=True)
    total = jnp.sum(x - lo, axis=1, keepdims=True) / (hi - lo)
    at = (jnp.take_along_axis(x, idx, axis=1) - lo) / (hi - lo) / total
    return jnp.log2(MATLAB_EPS + at)
  gain = log_density_at_fixations(s) - log_density_at_fixations(base)
  return jnp.sum(jnp.where(valid, gain, 0.0), axis=1) / jnp.sum(valid, axis=1)


@functools.lru_cache(maxsize=32)
def gaussian_operator(n: int, sigma: float, truncate: float = 4.0) -> np.ndarray:
  """(n, n) matrix of scipy.ndimage.gaussian_filter1d (mode 'reflect') along one axis."""
  radius = int(truncate * sigma + 0.5)
  offsets = np.arange(-radius, radius + 1)
  w = np.exp(-0.5 * (offsets / sigma) ** 2)
  w /= w.sum()
  src = np.arange(n)[:, None] + offsets[None, :]
  period = 2 * n
  src = np.mod(src, period)
  src = np.where(src >= n, period - 1 - src, src)
  op = np.zeros((n, n))
  np.add.at(op, (np.repeat(np.arange(n), offsets.size), src.ravel()), np.tile(w, n))
  return op.astype(np.float32)


def blur(maps: Array, op_h: Array, op_w: Array) -> Array:
  """Separable Gaussian blur of (B, H, W) maps with the operators of gaussian_operator."""
  hp = jax.lax.Precision.HIGHEST
  return jnp.einsum('hk,bkl,wl->bhw', op_h, maps, op_w, precision=hp)
