"""max_pool: flax's map, and a gradient that goes to the first maximal tap (as PyTorch)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from dinet_jax.models.pooling import max_pool


def _tied_map(shape, seed=0):
  """ReLU'd, coarsely quantised values: most windows hold ties, many all-zero."""
  x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
  return np.round(np.maximum(x, 0) * 2) / 2


def _slow_gradient(x, dy, window, stride, padding):
  """Loop over outputs; each gradient goes to the first maximum in row-major order."""
  n, h, w, c = x.shape
  dx = np.zeros_like(x, dtype=np.float64)
  for b in range(n):
    for oi in range(dy.shape[1]):
      for oj in range(dy.shape[2]):
        for ch in range(c):
          best, where = -np.inf, None
          for i in range(window):
            for j in range(window):
              r, s = oi * stride + i - padding, oj * stride + j - padding
              if 0 <= r < h and 0 <= s < w and x[b, r, s, ch] > best:
                best, where = x[b, r, s, ch], (r, s)
          dx[b, where[0], where[1], ch] += dy[b, oi, oj, ch]
  return dx


@pytest.mark.parametrize('shape,window,stride,padding', [
    ((2, 9, 11, 3), 3, 2, 1),   # ResNet's stem pool, odd sizes
    ((1, 8, 10, 2), 3, 2, 1),
    ((1, 7, 7, 2), 2, 2, 0),
    ((1, 6, 9, 2), 3, 1, 1),    # overlapping windows, stride 1
])
def test_map_and_gradient(shape, window, stride, padding):
  x = _tied_map(shape)
  flax_pool = lambda x: nn.max_pool(x, (window,) * 2, strides=(stride,) * 2,
                                    padding=((padding, padding),) * 2)
  y = max_pool(jnp.asarray(x), window, stride, padding)
  np.testing.assert_array_equal(y, flax_pool(jnp.asarray(x)))
  dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(max_pool(x, window, stride, padding) * dy)))
  got = np.asarray(grad(jnp.asarray(x)))
  np.testing.assert_allclose(got, _slow_gradient(x, dy, window, stride, padding),
                             rtol=0, atol=1e-6)
  # PyTorch's max_pool2d backward, the reference of the parity tests.
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
  torch.nn.functional.max_pool2d(xt, window, stride, padding).backward(
      torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()))
  np.testing.assert_allclose(got, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=0, atol=1e-6)


def test_stem_sized_gradient_equals_xla_select_and_scatter():
  x = jnp.asarray(_tied_map((2, 60, 80, 16), seed=2))
  flax_pool = lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  dy = jax.random.normal(jax.random.PRNGKey(0), (2, 30, 40, 16))
  ours = jax.grad(lambda x: jnp.sum(max_pool(x) * dy))(x)
  theirs = jax.grad(lambda x: jnp.sum(flax_pool(x) * dy))(x)
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match=r'shape \(4, 4\).*padding=1'):
    max_pool(jnp.ones((4, 4)))
  with pytest.raises(ValueError, match='padding=3'):
    max_pool(jnp.ones((1, 4, 4, 1)), 3, 2, 3)
