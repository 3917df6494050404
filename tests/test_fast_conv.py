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
    (9, 10, 32, 3, 2, 1, (1, 1), ('taps', 'im2col', 'tap_outputs')),
    (9, 9, 32, 1, 2, 1, (0, 0), ('taps',)),
    (7, 9, 32, 1, 1, 1, (0, 0), ('taps',)),
    (7, 9, 32, 3, 1, 1, (1, 1), ('taps', 'winograd', 'tap_outputs')),
    (15, 20, 32, 3, 1, 2, (2, 2), ('taps', 'winograd')),
    (15, 20, 32, 3, 1, 4, (4, 4), ('taps', 'winograd')),
    (15, 20, 32, 3, 1, 8, (8, 8), ('taps', 'winograd')),
    (15, 20, 32, 3, 1, 16, (16, 16), ('taps', 'winograd', 'tap_outputs')),
    (5, 6, 32, 3, 3, 2, (1, 2), ('taps', 'im2col', 'tap_outputs')),
    (4, 4, 32, 3, 1, 5, (5, 5), ('taps', 'winograd', 'tap_outputs')),
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


@pytest.mark.parametrize('m', sorted(layers._WINO_1D))
def test_winograd_1d_transforms_are_exact(m):
  """A^T [(G g) * (B^T d)] is the correlation of d (m + 2) with g (3), in float64."""
  bt, g_, at = (np.asarray(a, np.float64) for a in layers._WINO_1D[m])
  rng = np.random.default_rng(m)
  for _ in range(5):
    d, g = rng.standard_normal(m + 2), rng.standard_normal(3)
    expected = [d[i:i + 3] @ g for i in range(m)]
    np.testing.assert_allclose(at @ ((g_ @ g) * (bt @ d)), expected, rtol=0, atol=1e-13)


# Float32 error of each tile against float64, relative to the largest output, over 256
# channels of ReLU inputs (measured: F(2x2) 3-8e-7 like XLA's direct sum, the mixed
# tiles 0.8-2.1e-6, F(4x4) 2.2-5.9e-6); the bound leaves a factor of about 2.
TILE_ERROR = {(2, 2): 2e-6, (2, 4): 5e-6, (4, 2): 5e-6, (4, 4): 1.2e-5}


@pytest.mark.parametrize('tile', [(2, 2), (2, 4), (4, 2), (4, 4)], ids=str)
@pytest.mark.parametrize('h, w, d', [(30, 40, 4), (15, 20, 2), (7, 9, 1)])
def test_winograd_tiles_equal_float64_convolution(tile, h, w, d):
  """Every tile, on maps that are not multiples of the tile times the dilation: values
  and both gradients against a float64 convolution, within the tile's float32 error."""
  rng = np.random.default_rng(3)
  x = np.maximum(rng.standard_normal((2, h, w, 256)), 0).astype(np.float32)
  k = (rng.standard_normal((3, 3, 256, 8)) / 48).astype(np.float32)
  pad = ((d, d), (d, d))
  plain = lambda x, k: lax.conv_general_dilated(
      x, k, (1, 1), pad, rhs_dilation=(d, d), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  with jax.enable_x64():
    y64, vjp64 = jax.vjp(plain, x.astype(np.float64), k.astype(np.float64))
    g = rng.standard_normal(y64.shape)
    expected = [np.asarray(a) for a in (y64, *vjp64(g))]
  f = lambda x, k: matmul_conv(x, k, (1, 1), pad, (d, d), method='winograd', tile=tile)
  y, vjp = jax.vjp(f, jnp.asarray(x), jnp.asarray(k))
  got = [np.asarray(a) for a in (y, *vjp(jnp.asarray(g, jnp.float32)))]
  for name, a, b in zip(('value', 'input gradient', 'kernel gradient'), got, expected):
    assert a.shape == b.shape
    err = np.max(np.abs(a - b)) / np.max(np.abs(b))
    assert err <= TILE_ERROR[tile], (name, err)


@pytest.mark.parametrize('tile', [(2, 2), (2, 4), (4, 2)], ids=str)
@pytest.mark.parametrize('d', [1, 3])
def test_winograd_patches_are_the_overlapping_tiles(tile, d):
  """Each element of each tile, by its index formula, with a batch of two; and the
  gradient sends each tile element back to the input element it was read from."""
  (mh, mw), bh, bw, n, c = tile, 3, 2, 2, 5
  hp, wp = (mh * bh + 2) * d, (mw * bw + 2) * d
  xp = np.random.default_rng(7).standard_normal((n, hp, wp, c)).astype(np.float32)
  got = np.asarray(layers.winograd_patches(jnp.asarray(xp), tile, d))
  assert got.shape == (mh + 2, mw + 2, n, bh, d, bw, d, c)
  for a, b, ni, i, r, j, s in np.ndindex(got.shape[:-1]):
    np.testing.assert_array_equal(got[a, b, ni, i, r, j, s],
                                  xp[ni, (mh * i + a) * d + r, (mw * j + b) * d + s])
  reads = np.zeros(xp.shape[:3])
  for a, b, i, r, j, s in np.ndindex(mh + 2, mw + 2, bh, d, bw, d):
    reads[:, (mh * i + a) * d + r, (mw * j + b) * d + s] += 1
  _, vjp = jax.vjp(lambda x: layers.winograd_patches(x, tile, d), jnp.asarray(xp))
  np.testing.assert_array_equal(vjp(jnp.ones(got.shape))[0],
                                np.broadcast_to(reads[..., None], xp.shape))


def test_precomputed_kernel_transform_and_bad_tiles():
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((1, 12, 17, 32)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3, 32, 16)) / 17, jnp.float32)
  args = (x, k, (1, 1), ((2, 2), (2, 2)), (2, 2))
  for tile in layers.WINOGRAD_TILES:
    u = layers.winograd_kernel(k, tile)
    assert u.shape == (tile[0] + 2, tile[1] + 2, 32, 16)
    on_the_fly = matmul_conv(*args, method='winograd', tile=tile)
    np.testing.assert_allclose(matmul_conv(*args, transformed_kernel=u), on_the_fly,
                               rtol=0, atol=1e-5)
  with pytest.raises(ValueError, match='tile must be a pair of sizes in'):
    matmul_conv(*args, method='winograd', tile=(3, 3))
  with pytest.raises(ValueError, match=r'transformed_kernel of shape \(5, 6, 32, 16\)'):
    matmul_conv(*args, method='winograd', transformed_kernel=jnp.zeros((5, 6, 32, 16)))


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
  # The decoder's output layer, 256 -> 1: all taps' products in one matmul (9 x 1
  # outputs per pixel, no more than the 256 inputs); at 9 x 64 > 256 outputs, taps.
  assert conv_method((1, 30, 40, 256), (3, 3, 256, 1), **d(1)) == 'tap_outputs'
  assert conv_method((1, 30, 40, 256), (3, 3, 256, 64), **d(16)) == 'taps'
  # Tiles: the one with the fewest multiply-adds once the output is padded to a multiple
  # of the tile times the rate. A 40-column map at rate 4 pads to 40 for 2-wide tiles,
  # 48 for 4-wide ones; 30 rows pad to 32 for both.
  t = layers.winograd_tile
  assert t((1, 30, 40, 512), (3, 3, 512, 512), **d(4)) == (4, 2)
  assert t((1, 30, 40, 512), (3, 3, 512, 512), **d(2)) in ((2, 4), (4, 2))
  assert t((1, 30, 40, 512), (3, 3, 512, 512), **d(16)) is None
  assert t((1, 30, 40, 512), (3, 3, 512, 512), (2, 2), ((1, 1), (1, 1))) is None


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


@pytest.mark.parametrize('dtype,preferred', [(jnp.float32, None),
                                             (jnp.bfloat16, jnp.float32)])
def test_transposed_kernel_gradient_product_equals_plain(dtype, preferred):
  """The batched product with the transposed-copy kernel gradient (used for narrow
  Winograd layers) has the plain product's value and gradients, in their dtypes."""
  rng = np.random.default_rng(5)
  v = jnp.asarray(rng.standard_normal((6, 40, 16)), dtype)
  u = jnp.asarray(rng.standard_normal((6, 16, 24)), dtype)
  dm = jnp.asarray(rng.standard_normal((6, 40, 24)), preferred or dtype)
  outs = []
  for product in (layers._batched_product, layers._batched_product_transposed_grad):
    y, vjp = jax.vjp(lambda v, u: product(v, u, lax.Precision.HIGHEST, preferred), v, u)
    outs.append((y, *vjp(dm)))
  for plain, transposed in zip(*outs):
    assert plain.dtype == transposed.dtype and plain.shape == transposed.shape
    np.testing.assert_allclose(np.asarray(transposed, np.float32),
                               np.asarray(plain, np.float32), rtol=1e-5, atol=1e-5)
  # The kernel gradient multiplies a transposed copy: contraction over its last axis.
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda u: jnp.sum(
      layers._batched_product_transposed_grad(v, u, None, preferred))))(u))
  assert 'optimization_barrier' in jaxpr and 'transpose' in jaxpr
  # Winograd convolutions use it up to TRANSPOSED_GRAD_CHANNELS input channels.
  for cin in (layers.TRANSPOSED_GRAD_CHANNELS, layers.TRANSPOSED_GRAD_CHANNELS + 1):
    x, k = jnp.ones((1, 12, 16, cin)), jnp.ones((3, 3, cin, 8))
    conv = lambda k: jnp.sum(matmul_conv(x, k, (1, 1), ((2, 2), (2, 2)), (2, 2),
                                         method='winograd', tile=(2, 4)))
    barrier = 'optimization_barrier' in str(jax.make_jaxpr(jax.grad(conv))(k))
    assert barrier == (cin <= layers.TRANSPOSED_GRAD_CHANNELS), cin
