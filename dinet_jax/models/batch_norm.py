"""BatchNorm whose frozen form keeps no extra feature map for the backward pass.

With running statistics (DINet trains with BatchNorm frozen; every inference),
``nn.BatchNorm`` computes ``(x - mean) * (scale / sqrt(var + eps)) + bias``. Under
``jax.grad`` JAX keeps ``x - mean``, a new array the size of the feature map, for the
gradient of ``scale``, so XLA writes it in the forward pass and reads it back in the
backward pass. :class:`BatchNorm` computes the same expression, op for op, inside
``jax.checkpoint``: the backward pass recomputes ``x - mean`` from ``x`` (the
convolution output, which exists anyway) inside the fused gradient reduction. That is
one write and one read of a feature map fewer per BatchNorm (53 in ResNet-50) per
training step; the values and the gradients are flax's. ``prevent_cse`` must stay on:
without it XLA merges the recomputation with the forward pass's ``x - mean`` and
writes the array again.

(The folded form ``x * a + (bias - mean * a)`` would also avoid the array but is not
the same map in float32: where ``|mean|`` is large against the spread of ``x`` its
rounding error is larger, and in the PyTorch gradient parity test it flipped several
ReLUs whose input was near 0.)

The variables (``params/{scale,bias}``, ``batch_stats/{mean,var}``), shapes and initial
values are ``nn.BatchNorm``'s, so checkpoints and converted weights are unchanged. When
the statistics come from the batch (``use_running_average`` False) it is
``nn.BatchNorm`` itself.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


@functools.partial(jax.checkpoint, prevent_cse=True)
def _normalize(x: jnp.ndarray, mean: jnp.ndarray, mul: jnp.ndarray,
               bias: jnp.ndarray | None) -> jnp.ndarray:
  """flax's ``_normalize`` with given statistics, saving only its inputs for backward."""
  y = (x - mean) * mul
  return y if bias is None else y + bias


class BatchNorm(nn.BatchNorm):
  """``nn.BatchNorm`` over the last axis; the frozen form recomputes ``x - mean`` in the
  backward pass instead of keeping it (module docstring)."""

  @nn.compact
  def __call__(self, x: jnp.ndarray, use_running_average: bool | None = None, *,
               mask: jnp.ndarray | None = None) -> jnp.ndarray:
    frozen = nn.merge_param('use_running_average', self.use_running_average,
                            use_running_average)
    if not frozen:
      # Passing the flag again when it was given to the constructor is an error.
      return super().__call__(
          x, None if self.use_running_average is not None else False, mask=mask)
    if self.axis not in (-1, x.ndim - 1) or mask is not None:
      raise ValueError(f'BatchNorm {self.name!r}: the frozen form supports axis=-1 and '
                       f'no mask, got axis={self.axis!r}, mask given: {mask is not None}')
    features = (x.shape[-1],)
    mean = self.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32),
                         features).value
    var = self.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32),
                        features).value
    mul = lax.rsqrt(var + self.epsilon)
    args = [x]
    if self.use_scale:
      scale = self.param('scale', self.scale_init, features, self.param_dtype)
      mul = mul * scale
      args.append(scale)
    bias = None
    if self.use_bias:
      bias = self.param('bias', self.bias_init, features, self.param_dtype)
      args.append(bias)
    dtype = self.dtype or jnp.result_type(*args)
    return _normalize(x, mean, mul, bias).astype(dtype)
