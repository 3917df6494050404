"""The CPU fast path of the convolutions (dinet_jax.models.layers) equals the plain
formulation, lax.conv_general_dilated, in value and gradient."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from dinet_jax.models import layers
from dinet_jax.models.layers import conv_general, conv_method, matmul_conv, use_conv_impl

# (H, W, Cin, kernel, stride, dilation, padding, methods): DINet's geometries (stem,
# strided 3x3, strided 1x1, dilated 3x3 at rates 2..16 on maps smaller than the rate,
# odd sizes) and a few general ones (asymmetric padding, stride 3, a map smaller than
# the dilation).
GEOMETRIES = [
    (13, 11, 3, 7, 2, 1, (3, 3), ('im2col', 'auto')),
    (9, 10, 32, 3, 2, 1, (1, 1), ('taps', 'im2col')),
    (9, 9, 32, 1, 2, 1, (0, 0), ('taps',)),
    (7, 9, 32, 1, 1, 1, (0, 0), ('taps',)),
    (7, 9, 32, 3, 1, 1, (1, 1), ('taps', 'winograd')),
    (15, 20, 32, 3, 1, 2, (2, 2), ('taps', 'winograd')),
    (15, 20, 32, 3, 1, 4, (4, 4), ('taps', 'winograd')),
    (15, 20, 32, 3, 1, 8, (8, 8), ('taps', 'winograd')),
    (15, 20, 32, 3, 1, 16, (16, 16), ('taps', 'winograd')),
    (5, 6, 32, 3, 3, 2, (1, 2), ('taps', 'im2col')),
    (4, 4, 32, 3, 1, 5, (5, 5), ('taps', 'winograd')),
]


def _plain(x, k, stride, dilation, padding):
  return lax.conv_general_dilated(
      x, k, (stride, stride), [padding, padding], rhs_dilation=(dilation, dilation),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=lax.Precision.HIGHEST)


@pytest.mark.parametrize('geometry', GEOMETRIES, ids=lambda g: str(g[:7]))
def test_matmul_conv_equals_lax_in_value_and_gradients(geometry):
  h, w, cin, k, stride, dilation, padding, methods = geometry
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, h, w, cin)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((k, k, cin, 5)) / np.sqrt(k * k * cin), jnp.float32)
  expected, vjp = jax.vjp(lambda x, k_: _plain(x, k_, stride, dilation, padding), x, kernel)
  g = jnp.asarray(rng.standard_normal(expected.shape), jnp.float32)
  expected_grads = vjp(g)
  for method in methods:
    f = lambda x, k_, method=method: matmul_conv(
        x, k_, (stride, stride), (padding, padding), (dilation, dilation), method=method)
    got = jax.jit(lambda x, k_, g: (lambda y, vjp: (y, *vjp(g)))(*jax.vjp(f, x, k_)))(
        x, kernel, g)
    assert got[0].shape == expected.shape, method
    for a, b in zip(got, (expected, *expected_grads)):
      scale = float(jnp.max(jnp.abs(b))) + 1e-6
      assert float(jnp.max(jnp.abs(a - b))) <= 1e-5 * scale, method


def test_auto_picks_winograd_where_it_saves_products_and_taps_where_padding_dominates():
  d = lambda r: dict(strides=(1, 1), padding=((r, r), (r, r)), dilation=(r, r))
  # 240x320 input: 30x40 maps.
  assert conv_method((1, 30, 40, 512), (3, 3, 512, 512), **d(4)) == 'winograd'
  assert conv_method((1, 30, 40, 256), (3, 3, 256, 256), **d(2)) == 'winograd'
  assert conv_method((1, 30, 40, 256), (3, 3, 256, 256), **d(16)) == 'taps'
  # 120x160 input: a rate-16 tap row reads only padding on a 15-row map.
  assert conv_method((4, 15, 20, 256), (3, 3, 256, 256), **d(16)) == 'taps'
  assert conv_method((4, 15, 20, 256), (3, 3, 256, 256), **d(1)) == 'winograd'
  # The 7x7 stem on RGB: XLA's convolution. Strided and 1x1: taps.
  assert conv_method((1, 240, 320, 3), (7, 7, 3, 64), (2, 2), ((3, 3), (3, 3))) == 'xla'
  assert conv_method((1, 60, 80, 128), (3, 3, 128, 128), (2, 2), ((1, 1), (1, 1))) == 'taps'
  assert conv_method((1, 30, 40, 1024), (1, 1, 1024, 256), (1, 1), ((0, 0), (0, 0))) == 'taps'


def test_taps_that_read_only_padding_are_skipped():
  """On a 15-row map a rate-16 kernel's top and bottom rows read only padding: the
  per-tap formulation does 3 products, not 9."""
  x = jnp.ones((1, 15, 20, 8))
  k = jnp.ones((3, 3, 8, 8))
  jaxpr = jax.make_jaxpr(lambda x, k: matmul_conv(
      x, k, (1, 1), ((16, 16), (16, 16)), (16, 16), method='taps'))(x, k)
  text = str(jaxpr)
  assert text.count('dot_general') == 3


def test_conv_general_dispatch_and_fallbacks():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((1, 9, 9, 32)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3, 32, 4)) / 10, jnp.float32)
  args = (x, k, (1, 1), ((2, 2), (2, 2)))
  kw = dict(rhs_dilation=(2, 2), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  plain = str(jax.make_jaxpr(lambda: conv_general(*args, **kw, impl='xla'))())
  fast = str(jax.make_jaxpr(lambda: conv_general(*args, **kw, impl='matmul'))())
  assert 'conv_general_dilated' in plain and 'conv_general_dilated' not in fast
  np.testing.assert_allclose(conv_general(*args, **kw, impl='matmul'),
                             conv_general(*args, **kw, impl='xla'), atol=1e-4)
  # Cases the matmul path does not handle go to lax whatever the impl.
  for extra in (dict(lhs_dilation=(2, 2)), dict(feature_group_count=2)):
    kk = k[:, :, :16] if 'feature_group_count' in extra else k
    got = conv_general(x, kk, (1, 1), ((1, 1), (1, 1)), **extra,
                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'), impl='matmul')
    want = lax.conv_general_dilated(x, kk, (1, 1), ((1, 1), (1, 1)), **extra,
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    np.testing.assert_allclose(got, want, atol=1e-5)
  got = conv_general(x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                     impl='matmul')
  np.testing.assert_allclose(got, lax.conv_general_dilated(
      x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')), atol=1e-5)


def test_impl_selection():
  assert layers.resolve_conv_impl('auto') == (
      'matmul' if jax.default_backend() == 'cpu' else 'xla')
  with use_conv_impl('xla'):
    assert layers.get_conv_impl() == 'xla'
    with use_conv_impl('matmul'):
      assert layers.resolve_conv_impl() == 'matmul'
    assert layers.get_conv_impl() == 'xla'
  with pytest.raises(ValueError, match='conv impl'):
    with use_conv_impl('fast'):
      pass


def test_environment_variable_selects_and_is_validated():
  code = 'from dinet_jax.models import layers; print(layers.get_conv_impl())'
  env = dict(os.environ, DINET_CONV_IMPL='xla', JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True)
  assert out.stdout.strip() == 'xla', out.stderr
  env['DINET_CONV_IMPL'] = 'nope'
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True)
  assert out.returncode != 0 and 'DINET_CONV_IMPL' in out.stderr


def test_model_layers_under_pmap_and_jit_agree_between_formulations():
  """A DIM (dilated 3x3 convolutions at rates 4, 8, 16 on a map smaller than 16) traced
  under pmap on the four simulated CPU devices: outputs and parameter gradients agree
  between the formulations."""
  from dinet_jax.models import DilatedInception
  dim = DilatedInception(features=32, rates=(4, 8, 16))
  n = jax.local_device_count()
  x = jax.random.normal(jax.random.PRNGKey(1), (n, 1, 12, 10, 40))
  params = dim.init(jax.random.PRNGKey(0), x[0])['params']
  loss = lambda p, x: (lambda out: (jnp.mean(out ** 2), out))(dim.apply({'params': p}, x))
  results = {}
  for impl in ('xla', 'matmul'):
    with use_conv_impl(impl):
      f = jax.pmap(jax.value_and_grad(loss, has_aux=True), in_axes=(None, 0))
      results[impl] = f(params, x)
  (_, out_a), grads_a = results['xla']
  (_, out_b), grads_b = results['matmul']
  np.testing.assert_allclose(out_a, out_b, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, atol=1e-5 * float(jnp.max(jnp.abs(a)))), grads_a, grads_b)
